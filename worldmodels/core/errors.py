"""The one exception type the command line turns into a single readable line."""


class WorldModelsError(Exception):
    """A problem with the user's input (recipe, file, checkpoint, env id): no traceback needed."""
