"""`python tests/compiled_cli.py ARGS`: the engine's CLI with regional compilation on Dynamo's aot_eager backend
(no C++ compiler run, as the in-process tests set it), for tests that launch processes (torchrun). Prints the
number of graphs compiled when the command ends, so a test can tell the blocks really ran compiled."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch._dynamo.utils  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.models import regional_compile  # noqa: E402

regional_compile.BACKEND = "aot_eager"
code = main(sys.argv[1:])
print(f"compiled graphs: {int(torch._dynamo.utils.counters['stats']['unique_graphs'])}")
sys.exit(code)
