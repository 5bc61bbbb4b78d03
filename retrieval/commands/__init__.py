"""One module per `retrieval` subcommand; each exposes `main(argv) -> int`."""
