"""Errors for bad input. Every message names the file (or partition), the column and the counts."""


class BadInputError(ValueError):
    """The logs cannot be used as they are; the message says where and what."""


class BadRowsError(BadInputError):
    """Rows failed validation under `on_bad_rows: error`."""


def find_bad_input(error: BaseException) -> BadInputError | None:
    """The BadInputError inside a Ray task error (Ray wraps user exceptions, sometimes twice)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, BadInputError):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _strip_ray_frames(message: str) -> str:
    """Keep our exception's own message from a Ray task error's text: no frames before it, no Ray
    advice after it ("Failed to apply UDF transform ...", "The above exception ...")."""
    for name in ("BadRowsError", "BadInputError"):
        marker = f"pipelines.errors.{name}: "
        if marker in message:
            message = message.split(marker, 1)[1]
            for tail in ("\n\nThe above exception", "\nFailed to apply UDF"):
                message = message.split(tail, 1)[0]
            return message.rstrip()
    return message


def bad_input_message(error: BaseException) -> str | None:
    """The project's own text of the BadInputError inside `error` (Ray-wrapped or not), else None."""
    found = find_bad_input(error)
    if found is not None:
        return _strip_ray_frames(str(found))
    # Without DataContext.raise_original_map_exception Ray raises UserCodeException: ours is text.
    text = str(error)
    return _strip_ray_frames(text) if "pipelines.errors.Bad" in text else None


class surface_bad_input:
    """Re-raise a BadInputError raised inside Ray Data tasks as itself, not as a Ray wrapper.

    Example::

        >>> with surface_bad_input():
        ...     ds.take_all()   # a bad row raises BadRowsError naming file, column and counts
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, BadInputError):
            return False
        found = find_bad_input(exc)
        if found is not None:
            # Ray re-raises as a class deriving from both RayTaskError and ours: raise plain ours,
            # with the worker's message (which carries the file, column and counts).
            ours = next(c for c in type(found).__mro__ if c.__module__ == __name__)
            raise ours(_strip_ray_frames(str(found))) from None
        return False
