"""What nbval compares in a notebook's stored outputs: the structure of figures, and printed numbers at their printed precision.

The notebooks are stored executed, so a reader sees every figure and table without running
anything. The last bits of their floats, though, differ between CPUs (torch and numpy pick other
kernels on AVX-512 than on AVX2, and `ATEN_CPU_CAPABILITY=default` shows it on any machine), and
a stored output that records float bits tests the CPU, not nlviz. So before nbval compares a
cell's outputs, this hook changes two things (docs/notebooks.md says how to write a cell for them):

- **Figures** (`application/vnd.plotly.v1+json`), stored and new, are reduced to their structure:
  the tree of keys, every string (trace types, names, modes, titles, axis titles, hover
  templates), every boolean and null, the length of every list, the dtype and shape of every
  binary array. Every JSON number becomes a placeholder, and so does every decimal inside a
  string (one written with a point or an exponent: "max |.| = 1.2e-07" reads
  "max |.| = <number>"); integers in strings stay, since they name levels, periods and steps.
  The numbers a figure draws that the prose relies on are printed or asserted in a cell.
- **Printed text** (streams and `text/*` outputs): every decimal may differ from the stored one
  by at most one unit in its last printed digit (the finer of the two), which is what rounding
  flips when a value moves by far less than that unit; everything else, integers included,
  must match, except spaces (they align a table's columns and shift when a number's width
  does). So a number printed to 3 decimals is checked to 3 decimals, and each cell prints its
  numbers to the precision its prose relies on.

Everything else is nbval's own exact comparison; a mismatch is reported by nbval as usual.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
from pathlib import Path

from nbval.plugin import IPyNbCell

PLOTLY = "application/vnd.plotly.v1+json"
NUMBER = "<number>"
# A decimal as a float prints: with a point or an exponent, not inside a word ("v1.5", "x2").
DECIMAL = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?(?!\w)")
SPACES = re.compile(r"[ \t]+")
# plotly's binary arrays: {"dtype": "f8", "bdata": base64, "shape": "3, 4"} (shape only above 1-D)
ITEMSIZE = {"i1": 1, "u1": 1, "i2": 2, "u2": 2, "i4": 4, "u4": 4, "f4": 4, "i8": 8, "u8": 8, "f8": 8}

HERE = Path(__file__).resolve().parent


def structure(value):
    """A plotly figure's JSON with every number replaced by a placeholder and every binary array by its dtype and shape."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return DECIMAL.sub(NUMBER, value)
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            return {"dtype": value["dtype"], "shape": _shape(value)}
        return {key: structure(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [structure(v) for v in value]
    raise TypeError(f"plotly figure JSON: unexpected {type(value).__name__} value {value!r}")


def _shape(array: dict) -> str:
    if "shape" in array:
        return str(array["shape"]).replace(" ", "")
    if array["dtype"] not in ITEMSIZE:
        raise ValueError(f"plotly binary array: unknown dtype {array['dtype']!r}; known: {', '.join(ITEMSIZE)}")
    return str(len(base64.b64decode(array["bdata"])) // ITEMSIZE[array["dtype"]])


def same_text(stored: str, new: str) -> bool:
    """Whether two printed texts agree: the same words and integers, each decimal within one unit of its last digit."""
    a, b = DECIMAL.split(stored), DECIMAL.split(new)
    numbers_a, numbers_b = DECIMAL.findall(stored), DECIMAL.findall(new)
    if len(numbers_a) != len(numbers_b):
        return False
    if [SPACES.sub("", s) for s in a] != [SPACES.sub("", s) for s in b]:
        return False
    return all(_close(x, y) for x, y in zip(numbers_a, numbers_b))


def _close(x: str, y: str) -> bool:
    units = [u for u in (_unit(x), _unit(y)) if u is not None]
    return abs(float(x) - float(y)) <= (min(units) * (1 + 1e-9) if units else 0.0)


def _unit(literal: str) -> float | None:
    """One unit in the last printed digit of a decimal: 0.0121 -> 1e-4, 1.2e-07 -> 1e-8; None for numpy's "1." (unknown)."""
    mantissa, _, exponent = literal.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    if decimals == 0 and not exponent:
        return None  # numpy prints 1.00 as "1." beside "0.99": its precision is the other number's
    return 10.0 ** (int(exponent or 0) - decimals)


def _texts(outputs):
    """(slot, output, key) for each printed text of a cell's outputs, in order; a slot is a stream name or a text MIME type."""
    for output in outputs:
        if output.get("output_type") == "stream":
            yield "stream " + output["name"], output, "text"
        else:
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    yield mime, output["data"], mime


def comparable(test, ref):
    """Copies of a cell's new and stored outputs in which nbval's exact comparison applies the rules above.

    Figures become their structure; a new text that agrees with its stored counterpart (`same_text`)
    is replaced by the stored one, so only real differences reach nbval, and it shows them.
    """
    test, ref = copy.deepcopy(list(test)), copy.deepcopy(list(ref))
    for output in test + ref:
        if PLOTLY in output.get("data", {}):
            output["data"][PLOTLY] = structure(output["data"][PLOTLY])
    stored = {}
    for slot, holder, key in _texts(ref):
        stored.setdefault(slot, []).append(holder[key])
    seen = {}
    for slot, holder, key in _texts(test):
        i = seen[slot] = seen.get(slot, -1) + 1
        if i < len(stored.get(slot, ())) and same_text(stored[slot][i], holder[key]):
            holder[key] = stored[slot][i]
    return test, ref


def _compare(compare, test, ref, skip_compare=None):
    return compare(*comparable(test, ref), skip_compare)


def pytest_collection_modifyitems(items):
    # nbval builds each cell's item itself, so its comparison is wrapped per item rather than
    # subclassed; only the cells of the notebooks in this folder get it.
    for item in items:
        if isinstance(item, IPyNbCell) and HERE in Path(item.path).resolve().parents:
            item.compare_outputs = functools.partial(_compare, item.compare_outputs)
