"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input (config, path, data, argument): the CLI prints it as one line and exits 2.

    Raise it with a message that names what is wrong and where (file, line, key), so the user can fix
    it without reading a traceback.
    """
