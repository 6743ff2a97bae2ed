"""Heavy libraries stay out of `import dataaudit`: torch loads with the tracker, alibi-detect with the drift check."""
import subprocess
import sys


def test_import_dataaudit_leaves_heavy_libraries_alone():
    code = ("import sys, dataaudit, dataaudit.checks, dataaudit.cli; "
            "print(sorted(m for m in ('torch', 'alibi_detect', 'cleanlab', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
