"""Drive Radial Studio from a script: train a length-extension LoRA, then compare base vs extended.

Start the app first (`python app.py`), then:

    python examples/client.py [--url http://127.0.0.1:7860/] [--steps 40]

On the embedded tiny model this finishes in a few minutes on a CPU. Every endpoint the app has
is listed by `Client(url).view_api()`.
"""

from __future__ import annotations

import argparse
import json
import time

from gradio_client import Client


def wait_for_end(client: Client, run_id: str, poll: float = 2.0) -> dict:
    last_step = -1
    while True:
        status = client.predict(run_id, 0.0, api_name="/train_status")[-1]
        if status.get("step") != last_step:
            last_step = status.get("step")
            print(f"  {status['state']}: step {status.get('step')}/{status.get('total_steps')} loss {status.get('loss')}")
        if status["state"] in ("finished", "stopped", "failed", "diverged"):
            return status
        time.sleep(poll)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompt", default="a red circle moves from left to right on a dark blue background")
    args = parser.parse_args()

    client = Client(args.url, verbose=False)
    # Every parameter has a default (the tiny model on the synthetic set); name only what changes.
    run_id = client.predict(preset="tiny-wan", data_source="synthetic", max_steps=args.steps,
                            api_name="/train_start")[0]
    print(f"training run {run_id}")
    status = wait_for_end(client, run_id)
    if status["state"] != "finished":
        raise SystemExit(f"training ended as {status['state']}: {status.get('error')}")

    print("comparing base (dense, base length) with the LoRA (radial, extended length)")
    composed, base, extended, info = client.predict(prompt=args.prompt, preset="tiny-wan",
                                                    adapter=f"run:{run_id}/final", api_name="/compare")
    # The videos are the copies gradio_client downloaded here; `info` also names the server's own paths
    # (`base`, `extended`, `side_by_side`), which mean nothing on this machine: they are left out.
    settings = {k: v for k, v in info.items() if k not in ("base", "extended", "side_by_side")}
    print(json.dumps({"side_by_side": composed, "base": base, "extended": extended, **settings}, indent=2))


if __name__ == "__main__":
    main()
