"""Source a person would read otherwise than Python does is refused (bytes that are not UTF-8)."""


def source_problems(name: str, data: bytes) -> list[str]:
    """One-line problems of file `name`'s bytes, naming the line; [] if Python reads what a person sees."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return [f"{name} line {line}: bytes that are not UTF-8; save the file as UTF-8"]
    return []
