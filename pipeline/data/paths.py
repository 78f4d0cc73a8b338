"""Paths of a data source: the file kinds it knows, its error type, and how manifest paths resolve.

Shared by sources, landmarks and video (which import nothing else of each other for it).
"""
from __future__ import annotations

import os
from pathlib import Path

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".webm")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class SourceError(ValueError):
    """A data source problem; the message names the file/line and what was expected."""


def display_path(path: Path) -> str:
    """A path relative to the working directory (the repo root) when under it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def resolve(path: str | Path, base: str | Path | None = None) -> Path:
    """A manifest path as an absolute path (relative ones are relative to `base`, default cwd)."""
    path = Path(path)
    return path if path.is_absolute() else Path(base or Path.cwd()) / path


def safe_join(root: Path, rel: str, where: str) -> Path:
    """root/rel, refusing anything that leads outside root (`../`, absolute paths elsewhere).

    The check is lexical (normpath), so symlinks inside the root (root/videos -> /mnt/big) still work.
    """
    root = Path(os.path.abspath(root))
    target = Path(os.path.normpath(root / rel))
    if not target.is_relative_to(root):
        raise SourceError(f"{where}: path {rel!r} escapes the data root {root}; list paths must stay inside it")
    return target


def list_images(folder: Path) -> list[Path]:
    """Image files of a frame folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
