"""One APIRouter per area; routes validate, then delegate to the engine."""
