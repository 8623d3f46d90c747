"""Evaluation figures (matplotlib, Agg backend, no display needed).

- :func:`plot_ced`: cumulative error distribution curves, one per run (the paper's Figure 5a).
- :func:`plot_nme_by_pose`: mean NME per yaw bin, grouped bars, one colour per run (Figure 5b).
- :func:`plot_best_worst`: a grid of the best and worst predictions with landmarks drawn.

The functions take already computed numbers (curves, bins, per-image errors) so that the report
and the comparison of several runs draw the same pictures.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxalign import schemes as schemes_lib  # pylint: disable=wrong-import-position

# Colours of the ground truth and the two predicted groups in the grid (matplotlib names).
GT_COLOUR = 'white'
SL_COLOUR = 'limegreen'
UL_COLOUR = 'darkorange'


def plot_ced(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
             xlabel: str = 'NME (inter-ocular)', title: str | None = None,
             max_error: float | None = None) -> None:
  """Cumulative error distribution: fraction of images with NME <= x.

  Args:
    curves: label -> (thresholds (T,), fractions (T,)) with fractions in [0, 1]; the label is
      used as the legend entry (put the AUC / failure rate in it if wanted).
    path: the ``.png`` to write.
    xlabel: the x axis label (the normalisation).
    title: optional title.
    max_error: x axis limit (default: the largest threshold).
  """
  fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
  for label, (x, y) in curves.items():
    ax.plot(np.asarray(x) * 100, np.asarray(y) * 100, label=label, linewidth=1.8)
  limit = max_error if max_error is not None else max(
      (float(np.max(x)) for x, _ in curves.values()), default=0.1)
  ax.set_xlim(0, limit * 100)
  ax.set_ylim(0, 100)
  ax.set_xlabel(f'{xlabel} (%)')
  ax.set_ylabel('Images (%)')
  ax.grid(True, alpha=0.3)
  if title:
    ax.set_title(title)
  if curves:
    ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def bin_label(lo: float, hi: float, last: bool = False) -> str:
  """'[lo, hi)', or '[lo, hi]' for the last bin (closed, as in jaxalign.metrics.nme_by_pose)."""
  return f'[{lo:g}, {hi:g}' + (']' if last else ')')


def plot_nme_by_pose(series: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                     ylabel: str = 'NME (inter-ocular, %)', title: str | None = None) -> None:
  """Mean NME per yaw bin as grouped bars (one group per bin, one bar per run).

  Args:
    series: label -> list of bins ``{yaw_min, yaw_max, count, nme}`` (NME a fraction, ``None``
      or NaN for an empty bin). The runs may have different bins; the union is drawn.
    path: the ``.png`` to write.
  """
  keys = sorted({(float(b['yaw_min']), float(b['yaw_max']))
                 for bins in series.values() for b in bins})
  labels = [bin_label(a, b, i == len(keys) - 1) for i, (a, b) in enumerate(keys)]
  n_runs = max(len(series), 1)
  width = 0.8 / n_runs
  fig, ax = plt.subplots(figsize=(max(5.5, 0.7 * len(keys) * max(1, n_runs / 2) + 2), 4.2),
                         dpi=120)
  x = np.arange(len(keys))
  for r, (label, bins) in enumerate(series.items()):
    by_key = {(float(b['yaw_min']), float(b['yaw_max'])): b for b in bins}
    heights, counts = [], []
    for k in keys:
      b = by_key.get(k)
      value = None if b is None else b.get('nme')
      heights.append(np.nan if value is None else float(value) * 100)
      counts.append(0 if b is None else int(b.get('count', 0)))
    bars = ax.bar(x + (r - (n_runs - 1) / 2) * width, np.nan_to_num(heights), width,
                  label=label)
    for bar, h, c in zip(bars, heights, counts):
      if np.isfinite(h) and c:
        ax.annotate(str(c), (bar.get_x() + bar.get_width() / 2, h), ha='center', va='bottom',
                    fontsize=6, xytext=(0, 1), textcoords='offset points')
  ax.set_xticks(x)
  ax.set_xticklabels(labels, rotation=45, ha='right', fontsize=8)
  ax.set_xlabel('yaw (degrees; numbers on the bars: images per bin)')
  ax.set_ylabel(ylabel)
  ax.grid(True, axis='y', alpha=0.3)
  if title:
    ax.set_title(title)
  if series:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def best_and_worst(errors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the k smallest and the k largest finite errors (best first, worst first)."""
  errors = np.asarray(errors, np.float64)
  finite = np.flatnonzero(np.isfinite(errors))
  order = finite[np.argsort(errors[finite], kind='stable')]
  k = min(k, len(order))
  return order[:k], order[::-1][:k]


def _crop_window(box: np.ndarray, pts: np.ndarray, shape, margin: float = 0.25):
  """A square (x0, y0, x1, y1) integer window around the box and points, inside the image."""
  finite = pts[np.isfinite(pts).all(-1)]
  lo = np.minimum(box[:2], finite.min(0)) if len(finite) else box[:2]
  hi = np.maximum(box[2:], finite.max(0)) if len(finite) else box[2:]
  centre = (lo + hi) / 2
  half = (hi - lo).max() * (0.5 + margin)
  x0 = int(max(0, np.floor(centre[0] - half)))
  y0 = int(max(0, np.floor(centre[1] - half)))
  x1 = int(min(shape[1], np.ceil(centre[0] + half) + 1))
  y1 = int(min(shape[0], np.ceil(centre[1] + half) + 1))
  return x0, y0, x1, y1


def plot_best_worst(load_image: Callable[[int], np.ndarray | None], pred: np.ndarray,
                    gt: np.ndarray, boxes: np.ndarray, errors: np.ndarray,
                    path: str | os.PathLike, k: int = 5, scheme=schemes_lib.IBUG68,
                    names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A 2 x k grid: the k best (top row) and k worst (bottom row) faces with landmarks drawn.

  Ground truth as small white dots, predicted SLs green, predicted ULs orange; each panel is
  cropped around its face and titled with its NME.

  Args:
    load_image: index -> (H, W, 3) RGB uint8 image, or None when it cannot be read (the panel
      then shows the points alone).
    pred, gt: (N, L, 2) image pixels.
    boxes: (N, 4) face boxes.
    errors: (N,) per-image NME (fractions); NaN entries are never picked.
    path: the ``.png`` to write.
    k: faces per row.
    names: optional per-image names shown under the NME.

  Returns:
    (best, worst) index arrays.
  """
  scheme = schemes_lib.get_scheme(scheme)
  best, worst = best_and_worst(errors, k)
  cols = max(len(best), 1)
  fig, axes = plt.subplots(2, cols, figsize=(2.4 * cols, 5.6), dpi=110, squeeze=False)
  stable = scheme.stable_mask()
  for row, (indices, row_name) in enumerate(((best, 'best'), (worst, 'worst'))):
    for col in range(cols):
      ax = axes[row, col]
      ax.set_xticks([])
      ax.set_yticks([])
      if col >= len(indices):
        ax.axis('off')
        continue
      i = int(indices[col])
      p, g = np.asarray(pred[i], np.float64), np.asarray(gt[i], np.float64)
      box = np.asarray(boxes[i], np.float64)
      image = load_image(i)
      shape = image.shape[:2] if image is not None else (
          int(np.nanmax([box[3], np.nanmax(g[:, 1])])) + 1,
          int(np.nanmax([box[2], np.nanmax(g[:, 0])])) + 1)
      x0, y0, x1, y1 = _crop_window(box, np.concatenate([p, g]), shape)
      if image is not None:
        ax.imshow(np.asarray(image)[y0:y1, x0:x1], extent=(x0 - 0.5, x1 - 0.5, y1 - 0.5,
                                                           y0 - 0.5))
      else:
        ax.set_facecolor('0.2')
      ax.set_xlim(x0 - 0.5, x1 - 0.5)
      ax.set_ylim(y1 - 0.5, y0 - 0.5)
      dot = max(2.0, 18.0 / max(1, cols) * 2)
      ax.scatter(g[:, 0], g[:, 1], s=dot, c=GT_COLOUR, edgecolors='black', linewidths=0.3)
      ax.scatter(p[stable, 0], p[stable, 1], s=dot, c=SL_COLOUR)
      ax.scatter(p[~stable, 0], p[~stable, 1], s=dot, c=UL_COLOUR)
      title = f'{row_name}: {errors[i] * 100:.2f}%'
      if names is not None:
        title += f'\n{os.path.basename(str(names[i]))[:24]}'
      ax.set_title(title, fontsize=7)
  fig.suptitle('white: ground truth, green: predicted SL, orange: completed UL', fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=1.5)
  fig.savefig(path)
  plt.close(fig)
  return best, worst
