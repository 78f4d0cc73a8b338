"""Video sources for the ingest stage: synthetic set, class folders, MMAction2/UCF101 list files.

`ingest(data_params, work_dir, final_dir)` -> manifest rows (dicts with `MANIFEST_COLUMNS`), one
per video, in a stable order (class folder / list order). Splits are stratified and seeded, or
come from `data.split_files` (a missing val/test split is carved from train the same way).
`write_ingest(rows, class_names, folder)` writes them as `manifest.csv` and `classes.json`;
`read_manifest(path)` and `manifest_class_names(path, rows)` read them back (the extract stage).

Accepted list lines (paths relative to `data.root`; never outside it):
  `path label`                          a video (or a folder of frames, all its images)
  `frame_dir total_frames label`        a folder of frames (img_00001.jpg style, any sorted names)
  `frame_dir offset total_frames label` the same, starting `offset` images in
  `path`                                UCF101 testlist: label from the class folder (needs class_index)
With `data.class_index` (UCF101 classInd.txt, `index name`), labels in list lines are its 1-based
indices. A colour file `x<depth_pattern[0]>.ext` with a sibling `x<depth_pattern[1]>.ext` gets that
sibling as its depth video; depth files are never listed as videos of their own.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from pipeline.data.landmarks import CLASS_NAME, scan_300vw, write_synthetic
from pipeline.data.paths import VIDEO_EXTS, SourceError, display_path, list_images, resolve, safe_join
from pipeline.data.synthetic import write_dataset

MANIFEST_COLUMNS = ["video_id", "path", "depth_path", "label", "class_name", "split", "frames", "fps", "width",
                    "height", "offset"]
SPLITS = ("train", "val", "test")


def depth_partner(path: Path, pattern) -> Path | None:
    """The depth file beside colour file `path` (x_color.avi -> x_depth.avi), if it exists."""
    color, depth = pattern
    if not path.stem.endswith(color):
        return None
    candidate = path.with_name(path.stem[: len(path.stem) - len(color)] + depth + path.suffix)
    return candidate if candidate.exists() else None


def _video_id(path: Path, root: Path, pattern) -> str:
    rel = path.relative_to(root)
    stem = rel.stem if rel.suffix.lower() in VIDEO_EXTS else rel.name
    if stem.endswith(pattern[0]) and len(stem) > len(pattern[0]):
        stem = stem[: -len(pattern[0])]
    return (rel.parent / stem).as_posix()


def _is_depth(path: Path, pattern) -> bool:
    return path.stem.endswith(pattern[1]) and len(path.stem) > len(pattern[1])


def read_class_index(path: Path) -> dict[int, str]:
    """UCF101 classInd.txt (`1 ApplyEyeMakeup` per line) -> {index: name}."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SourceError(f"{path}:{n}: {line!r}: expected `index class_name`")
        out[int(parts[0])] = parts[1]
    if not out:
        raise SourceError(f"{path}: no classes in the class index")
    return out


def scan_folder(root: Path, pattern) -> tuple[list[dict], list[str]]:
    """ROOT/<class>/<video> -> (entries, class names sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"data.root: {str(root)!r}: not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SourceError(f"data.root: {str(root)!r}: no class folders (expected ROOT/<class>/<video>)")
    entries = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in VIDEO_EXTS and path.is_file() and not _is_depth(path, pattern):
                entries.append({"path": path, "label": label, "class_name": name})
    if not entries:
        raise SourceError(f"data.root: {str(root)!r}: no videos ({', '.join(VIDEO_EXTS)}) in the class folders")
    return entries, classes


def parse_list(list_path: Path, root: Path, class_index: dict[int, str] | None, folder_classes=None) -> list[dict]:
    """Entries of one MMAction2-style / UCF101 list file (see the module docstring)."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise SourceError(f"{list_path}: no such list file")
    names = list(class_index.values()) if class_index else folder_classes
    entries = []
    for n, line in enumerate(list_path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{list_path}:{n}"
        if not all(p.lstrip("-").isdigit() for p in parts[1:]):
            raise SourceError(f"{where}: {line!r}: expected `path label`, `frame_dir total label` or "
                              "`frame_dir offset total label` (integers after the path)")
        path = safe_join(root, parts[0], where)
        nums = [int(p) for p in parts[1:]]
        entry = {"path": path, "offset": 0, "total": None, "where": where}
        if len(nums) == 3:
            entry["offset"], entry["total"], label = nums
        elif len(nums) == 2:
            if not path.is_dir():
                raise SourceError(f"{where}: {line!r}: three fields need a folder of frames; "
                                  "multi-label video lists are not supported")
            entry["total"], label = nums
        elif len(nums) == 1:
            label = nums[0]
        elif len(nums) == 0:
            label = None
        else:
            raise SourceError(f"{where}: {line!r}: too many fields")
        if folder_classes is not None and not class_index:  # folder source: the class folder gives the label
            label = None
        if label is None:
            cls = Path(parts[0]).parts[0]
            if names is None or cls not in names:
                raise SourceError(f"{where}: {line!r}: no label, and class folder {cls!r} is not a known class "
                                  "(set data.class_index to a classInd.txt)")
            entry["class_name"] = cls
        elif class_index:
            if label not in class_index:
                raise SourceError(f"{where}: label {label} is not an index of data.class_index")
            entry["class_name"] = class_index[label]
        else:
            if label < 0:
                raise SourceError(f"{where}: label {label} is negative")
            entry["label"] = label
        entries.append(entry)
    return entries


def _name_labels(entries: list[dict], root: Path, names: list[str] | None) -> list[str]:
    """Fill label/class_name on every entry; returns the class names (index = label)."""
    if names is None:  # integer labels only: name a class after its common top folder, else class_<k>
        k = max(e["label"] for e in entries) + 1
        tops = {}
        for e in entries:
            rel = e["path"].relative_to(root).parts
            tops.setdefault(e["label"], set()).add(rel[0] if len(rel) > 1 else None)
        names = [f"class_{i}" for i in range(k)]
        found = {lab: t.pop() for lab, t in tops.items() if len(t) == 1 and None not in t}
        if len(set(found.values())) == len(found):
            for lab, top in found.items():
                names[lab] = top
    for e in entries:
        if "class_name" in e:
            e["label"] = names.index(e["class_name"])
        e["class_name"] = names[e["label"]]
    return names


def stratified_split(labels, val_fraction: float, test_fraction: float, seed: int, only_val=False) -> list[str]:
    """Seeded per-class split; every class with any clip keeps at least one train clip."""
    labels = np.asarray(labels)
    out = np.array(["train"] * len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n = len(idx)
        n_test = 0 if only_val else int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        while n_test + n_val >= n and (n_test or n_val):
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        out[idx[:n_test]] = "test"
        out[idx[n_test:n_test + n_val]] = "val"
    return list(out)


def probe(entry: dict) -> dict:
    """What the container says of a video (frames, fps, width, height; zeros if it cannot be opened)."""
    path = entry["path"]
    if path.is_dir():
        images = list_images(path)
        avail = max(len(images) - entry.get("offset", 0), 0)
        frames = min(avail, entry["total"]) if entry.get("total") is not None else avail
        img = cv2.imread(str(images[entry.get("offset", 0)])) if frames else None
        h, w = img.shape[:2] if img is not None else (0, 0)
        return {"frames": frames, "fps": 0.0, "width": w, "height": h}
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return {"frames": 0, "fps": 0.0, "width": 0, "height": 0}
        return {"frames": max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0), "fps": round(float(cap.get(cv2.CAP_PROP_FPS)), 3),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    finally:
        cap.release()


def ingest(data, work_dir: Path, final_dir: Path | None = None) -> tuple[list[dict], list[str]]:
    """Collect, label, split and probe the videos of a DataParams.

    work_dir receives the synthetic videos (under work_dir/videos); their manifest paths name
    final_dir/videos (where the atomic rename puts them). Returns (rows, class_names).
    """
    work_dir, final_dir = Path(work_dir), Path(final_dir or work_dir)
    pattern = tuple(data.depth_pattern)
    generated = data.source in ("synthetic", "synthetic_landmarks")  # written under work_dir/videos
    split_from_files = bool(data.split_files) and data.source in ("folder", "list")
    if data.source in ("synthetic_landmarks", "300vw"):  # task: regression (pipeline.data.landmarks)

        root = work_dir / "videos" if generated else Path(os.path.abspath(data.root))
        entries = write_synthetic(data.landmarks, root) if generated else scan_300vw(root)
        names = [CLASS_NAME]
    elif data.source == "synthetic":
        root = work_dir / "videos"
        written = _write_synthetic(data, root)
        names = list(data.synthetic.classes)
        entries = [{"path": w["path"], "class_name": w["class_name"], "label": names.index(w["class_name"])}
                   for w in written]
    else:
        root = Path(os.path.abspath(data.root))
        if not root.is_dir():
            raise SourceError(f"data.root: {data.root!r}: not a folder")
        class_index = read_class_index(resolve(data.class_index)) if data.class_index else None
        scanned, folder_classes = scan_folder(root, pattern) if data.source == "folder" else (None, None)
        if split_from_files:
            entries = []
            for split, f in data.split_files.items():
                for e in parse_list(resolve(f), root, class_index, folder_classes):
                    entries.append({**e, "split": split})
        elif data.source == "folder":
            entries = scanned
        else:
            entries = [e for f in data.list_files for e in parse_list(resolve(f), root, class_index)]
        if not entries:
            raise SourceError("no videos: the list files are empty")
        names = _name_labels(entries, root, list(class_index.values()) if class_index else folder_classes)
    for e in entries:
        e["video_id"] = _video_id(e["path"], root, pattern)
        if not e["path"].exists():
            raise SourceError(f"{e.get('where', e['path'])}: {e['path']} does not exist")
        e["depth_path"] = depth_partner(e["path"], pattern) if e["path"].is_file() else None
    counts = Counter(e["video_id"] for e in entries)
    for e in entries:  # x.avi and x.mp4 side by side: keep the extension in their ids
        if counts[e["video_id"]] > 1 and e["path"].is_file():
            e["video_id"] += e["path"].suffix
    seen = {}
    for e in entries:
        if e["video_id"] in seen:
            raise SourceError(f"video {e['video_id']!r} is listed twice ({seen[e['video_id']]} and {e.get('where')})")
        seen[e["video_id"]] = e.get("where", e["path"])
    _assign_splits(entries, data, split_from_files)
    def final(p):  # the path as the manifest names it (synthetic: where the atomic rename puts it)
        if p is None:
            return ""
        if generated:
            p = final_dir / Path(p).relative_to(work_dir)
        return display_path(p)

    rows = []
    for e in entries:
        info = probe(e)
        if e.get("total") is not None:
            info["frames"] = min(info["frames"], e["total"])
        rows.append({"video_id": e["video_id"], "path": final(e["path"]), "depth_path": final(e["depth_path"]),
                     "label": e["label"], "class_name": e["class_name"], "split": e["split"], **info,
                     "offset": e.get("offset", 0)})
    return rows, names


def _write_synthetic(data, root: Path) -> list[dict]:

    return write_dataset(data.synthetic, root, tuple(data.depth_pattern))


def _assign_splits(entries: list[dict], data, split_from_files: bool) -> None:
    if not split_from_files:
        splits = stratified_split([e["label"] for e in entries], data.val_fraction, data.test_fraction, data.seed)
        for e, s in zip(entries, splits):
            e["split"] = s
        return
    given = set(data.split_files)
    pool = [e for e in entries if e["split"] == "train"]
    carve_val = "val" not in given and data.val_fraction > 0
    carve_test = "test" not in given and data.test_fraction > 0
    if pool and (carve_val or carve_test):
        splits = stratified_split([e["label"] for e in pool], data.val_fraction if carve_val else 0.0,
                                  data.test_fraction if carve_test else 0.0, data.seed)
        for e, s in zip(pool, splits):
            e["split"] = s


def write_manifest(rows: list[dict], path: Path) -> None:
    """Write manifest rows as CSV with MANIFEST_COLUMNS."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})


def read_manifest(path: Path) -> list[dict]:
    """Manifest rows with typed values (label/frames/width/height/offset int, fps float)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such manifest (run the ingest stage first)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS[:-1] if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path}: missing columns {missing}; expected {MANIFEST_COLUMNS}")
        rows = []
        for r in reader:
            for k in ("label", "frames", "width", "height", "offset"):
                r[k] = int(r.get(k) or 0)
            r["fps"] = float(r["fps"] or 0)
            rows.append(r)
    return rows


def write_ingest(rows: list[dict], class_names: list[str], folder: Path) -> None:
    """The ingest stage's outputs in `folder`: `manifest.csv` (MANIFEST_COLUMNS) and `classes.json` (the class
    names by label)."""
    write_manifest(rows, folder / "manifest.csv")
    (folder / "classes.json").write_text(json.dumps(class_names, indent=1) + "\n")


def manifest_class_names(manifest: Path, rows: list[dict]) -> list[str]:
    """The class names by label: `classes.json` beside the manifest, else the manifest rows' `class_name`s
    (`class_<label>` for a label no row has)."""
    classes_file = Path(manifest).parent / "classes.json"
    if classes_file.is_file():
        return json.loads(classes_file.read_text())
    names = {r["label"]: r["class_name"] for r in rows}
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
