"""Build .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined (no CDN).

`python .dvc/plots/offline.py NODE_MODULES` (or `make plots-template`, which runs `npm ci` on vendor/package-lock.json
first) reads the three minified builds from NODE_MODULES and writes the template that `.dvc/config`
(`plots.html_template`) names. DVC fills `{plot_divs}`; `{scripts}` is left out, so DVC adds no CDN tags.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBS = ("vega", "vega-lite", "vega-embed")
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{libs}
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def build(node_modules: Path) -> str:
    """The page with each library's minified build inlined, headed by its name and version."""
    libs = []
    for name in LIBS:
        pkg = json.loads((node_modules / name / "package.json").read_text())
        js = (node_modules / name / "build" / f"{name}.min.js").read_text(encoding="utf-8")
        if "</script" in js.lower() or "{plot_divs}" in js:
            raise SystemExit(f"{name}.min.js contains '</script' or '{{plot_divs}}': it cannot be inlined")
        libs.append(f"    <!-- {name} {pkg['version']} ({pkg.get('license')}) -->\n    <script>{js}</script>")
    return PAGE.replace("{libs}", "\n".join(libs))


if __name__ == "__main__":
    (HERE / "offline.html").write_text(build(Path(sys.argv[1])), encoding="utf-8")
