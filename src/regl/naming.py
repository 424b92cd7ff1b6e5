"""File names shared by the stages."""


def client_name(client: int) -> str:
    """``client_<id>``, unpadded: DVC foreach templates build the same name from ``${item}``."""
    return f"client_{client}"
