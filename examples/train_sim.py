#!/usr/bin/env python3
"""Tiny simulated training script used as an ``hpsearch`` target.

It behaves like a hypnettorch-era training script: it takes its
hyperparameters as command-line flags, refuses to reuse an existing output
folder and writes a ``performance_overview.txt`` summary (``keyword value``
per line) that the hyperparameter search reads.

The "training" minimizes an ill-conditioned 2-D quadratic with noisy
mini-batch gradients (noise shrinks with the batch size), so the final
accuracy depends on ``--lr``, ``--momentum``, ``--batch_size`` and
``--optimizer`` in a plausible way while running in milliseconds.
Standard library only, Python 3.6+.
"""
import argparse
import math
import os
import random
import sys
import time

CURVATURE = [1.0, 0.1]   # Per-coordinate curvature (ill-conditioned).
DATASET_SIZE = 256       # Samples per "epoch"; steps = DATASET_SIZE // bs.


def write_summary(out_dir, loss, epochs, finished=None):
    """Write the summary atomically (readers never see half a file)."""
    acc = 1.0 / (1.0 + loss) if math.isfinite(loss) else 0.0
    lines = ['acc_final %f' % acc, 'loss_final %f' % loss,
             'epochs %d' % epochs]
    if finished is not None:
        lines.append('finished %d' % finished)
    path = os.path.join(out_dir, 'performance_overview.txt')
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(path + '.tmp', path)
    return acc


def main():
    p = argparse.ArgumentParser(description='Simulated training run.')
    p.add_argument('--out_dir', type=str, required=True)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--optimizer', choices=['sgd', 'adam'], default='sgd')
    p.add_argument('--momentum', type=float, default=0.0)
    p.add_argument('--use_bn', action='store_true',
                   help='Simulated batch norm: better conditioning.')
    p.add_argument('--random_seed', type=int, default=42)
    p.add_argument('--sleep', type=float, default=0.0,
                   help='Seconds to sleep per epoch (to make runs slow).')
    p.add_argument('--fail', action='store_true',
                   help='Crash halfway (partial summary, exit status 1).')
    args = p.parse_args()

    # Never overwrite previous results (old scripts asked on stdin instead).
    try:
        os.makedirs(args.out_dir)
    except OSError:
        print('Output directory %s already exists, refusing to overwrite.'
              % args.out_dir, file=sys.stderr)
        sys.exit(1)

    rng = random.Random(args.random_seed)
    curv = [1.0, 0.5] if args.use_bn else CURVATURE
    loss_of = lambda w: 0.5 * sum(c * x * x for c, x in zip(curv, w))
    w = [3.0, -2.0]          # Start point; optimum is the origin.
    vel, m, v = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    noise = 1.0 / math.sqrt(max(args.batch_size, 1))
    steps = max(DATASET_SIZE // max(args.batch_size, 1), 1)
    write_summary(args.out_dir, loss_of(w), 0, finished=0)

    t = 0
    for epoch in range(1, args.epochs + 1):
        for _ in range(steps):
            t += 1
            for i in range(2):
                g = curv[i] * w[i] + rng.gauss(0.0, noise)
                if args.optimizer == 'sgd':    # Heavy-ball momentum SGD.
                    vel[i] = args.momentum * vel[i] + g
                    w[i] -= args.lr * vel[i]
                else:                          # Adam (momentum unused).
                    m[i] = 0.9 * m[i] + 0.1 * g
                    v[i] = 0.999 * v[i] + 0.001 * g * g
                    m_hat, v_hat = m[i] / (1 - 0.9**t), v[i] / (1 - 0.999**t)
                    w[i] -= args.lr * m_hat / (math.sqrt(v_hat) + 1e-8)
                w[i] = max(min(w[i], 1e6), -1e6)   # Keep divergence finite.
        loss = loss_of(w)
        print('Epoch %d: loss %f' % (epoch, loss), flush=True)
        if args.sleep > 0:
            time.sleep(args.sleep)
        if args.fail and epoch >= (args.epochs + 1) // 2:
            write_summary(args.out_dir, loss, epoch)  # No "finished" line.
            print('Simulated failure in epoch %d.' % epoch, file=sys.stderr)
            sys.exit(1)

    acc = write_summary(args.out_dir, loss_of(w), args.epochs, finished=1)
    print('Finished: acc_final %f' % acc)


if __name__ == '__main__':
    main()
