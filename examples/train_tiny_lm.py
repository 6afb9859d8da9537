"""Train the tiny DSA language model (dense warm-up of the indexer, then sparse training) on the
embedded corpus and print its final evaluation. Runs in seconds on a CPU.

    python examples/train_tiny_lm.py [--out runs/example-tiny-dsa]
"""

import argparse
import tempfile

from sparse_attention.training.config import preset
from sparse_attention.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder (default: a temporary folder)")
    args = parser.parse_args()
    config = preset("tiny", attention="dsa").with_paths({"train.warmup.steps": 4, "train.main.steps": 6})
    out = args.out or tempfile.mkdtemp(prefix="sparse-attention-example-")
    results = train(config, out, progress=False)
    final = results["final_eval"]
    print(f"{out}: stages {[s['name'] for s in results['stages']]}, final val loss {final['val_loss']:.4g},"
          f" indexer recall {final.get('recall', float('nan')):.3f}")


if __name__ == "__main__":
    main()
