"""`pip install .` (a wheel, not an editable checkout) ships the resources and the config schema."""

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import cellduality, json
from pathlib import Path
from cellduality.config import load_schema
from cellduality.teacher.markers.knowledge import Knowledge, resource_files
from cellduality.data.simulated_perturbation import DEFAULT_PROGRAMS
from cellduality.report.tables import PAPER_RESULTS
schema = load_schema()
knowledge = Knowledge.load()
files = resource_files()
print(json.dumps({"package": cellduality.__file__, "schema_sections": len(schema["properties"]),
                  "marker_files": [str(p) for p in files], "programs": DEFAULT_PROGRAMS.is_file(),
                  "paper_results": PAPER_RESULTS.is_file()}))
"""


def test_wheel_installs_with_resources(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("cellduality-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    out = subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    info = json.loads(out.stdout.strip().splitlines()[-1])
    site = str(env_dir)
    assert info["package"].startswith(site), info  # the installed wheel, not this checkout
    assert info["schema_sections"] > 5
    assert info["marker_files"] and all(p.startswith(site) for p in info["marker_files"]), info
    assert info["programs"] and info["paper_results"]
