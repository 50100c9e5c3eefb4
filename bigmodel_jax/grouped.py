"""Per-group evaluation: every metric of the task for each group of
examples (`input.groups`, `dataio/groups.py`) and the largest gap between
groups, so a model's unequal quality across groups is measured.

Eval batches that carry "groups" ((B, G) weights, one group per example)
get the task's eval sums once more per group (`steps.make_eval_step`,
under "groups", with a leading G axis); `per_group` summarizes each
group once, and `summarize` turns that into

  group/NAME/accuracy ...   each group's metrics (the task's summary)
  group_gap/accuracy ...    max - min over the groups
  group/NAME/count          the group's examples

and `table` into the text table printed with the final evaluation.
"""
import re

import jax

# Scalars not worth a row per group.
_SKIPPED = re.compile(r"/class_|^top\d+_accuracy$")


def _key(name: str) -> str:
  return re.sub(r"[^\w.-]+", "_", name)


def per_group(task, totals: dict, names) -> dict:
  """Group name -> the task's summary of its examples (and "count")."""
  if not names or "groups" not in totals:
    return {}
  out = {}
  for g, name in enumerate(names):
    sums = jax.tree.map(lambda x, g=g: x[g], totals["groups"])
    metrics = {k: v for k, v in task.summarize(sums).items()
               if not _SKIPPED.search(k)} if float(sums["count"]) else {}
    out[name] = {**metrics, "count": float(sums["count"])}
  return out


def summarize(groups: dict) -> dict:
  """Scalars of `per_group`'s result: each group's metrics, the gaps."""
  scalars = {f"group/{_key(name)}/{k}": v for name, metrics in groups.items()
             for k, v in metrics.items()}
  shared = set.intersection(*(set(m) for m in groups.values())) if groups \
      else set()
  for k in sorted(shared - {"count"}):
    values = [m[k] for m in groups.values()]
    scalars[f"group_gap/{k}"] = max(values) - min(values)
  return scalars


def table(groups: dict) -> str | None:
  """`per_group`'s result as rows of groups, columns of metrics; None
  without groups."""
  if not groups:
    return None
  columns = ["count"] + sorted({k for m in groups.values() for k in m} -
                               {"count"})
  lines = ["| group | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for name, metrics in groups.items():
    lines.append(f"| {name} | " + " | ".join(
        f"{metrics[c]:,.0f}" if c == "count" else
        (f"{metrics[c]:.4f}" if c in metrics else "") for c in columns) + " |")
  return "\n".join(lines)
