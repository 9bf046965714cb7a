"""Reading image files, with errors that name the file. No torch: the ONNX runtime (saga.deploy) uses it too."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from saga.errors import DataError


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, decoding it now so that a corrupt file fails here, naming its path."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
