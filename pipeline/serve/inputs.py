"""`prernn predict`'s INPUT arguments -> what to predict on: video files, frame folders, camera indices.

`expand_inputs(items, depth_pattern)`: a video file as it is; a folder -> its videos, sorted (depth files
`x_depth.avi`, the partners of `x_color.avi`, are not inputs), or the folder itself when it holds only images (a
frame folder: one video); a number that is not a path -> a camera index; an empty folder -> ("error", item, reason).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data.paths import IMAGE_EXTS, VIDEO_EXTS
from pipeline.serve.preprocessing import DEFAULT_DEPTH_PATTERN


def expand_inputs(items: list[str], depth_pattern=DEFAULT_DEPTH_PATTERN) -> list:
    """INPUT arguments -> list of Path (video or frame folder) | int (camera) | ("error", item, reason)."""
    out = []
    for item in items:
        path = Path(item)
        if item.isdigit() and not path.exists():
            out.append(int(item))
        elif path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS
                            and not (p.stem.endswith(depth_pattern[1]) and len(p.stem) > len(depth_pattern[1])))
            if videos:
                out += videos
            elif any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir()):
                out.append(path)  # a frame folder: one video
            else:
                out.append(("error", item, f"folder holds no videos ({', '.join(VIDEO_EXTS)}) or frames"))
        else:
            out.append(path)
    return out


def input_name(item) -> str:
    """How an input is named in the output: its path, or `camera:<index>`."""
    return f"camera:{item}" if isinstance(item, int) else str(item)
