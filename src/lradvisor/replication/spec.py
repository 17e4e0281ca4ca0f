"""Study files of the paper's experiments (``studies/E*.yaml``): load, validate, find.

A study file is plain data (``studies/README.md``): ``id``, ``name``, ``kind``, ``protocol``,
an optional ``quick`` mapping merged over the protocol by ``--quick`` (top-level keys
replaced), ``claims`` (the published claims as checks on the kind's measured values) and an
optional ``notes`` text (protocol choices the paper leaves open, stated once).
Every problem is one :class:`~lradvisor.errors.ConfigError` naming file, field, expectation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lradvisor.config import read_yaml
from lradvisor.errors import ConfigError, LRAdvisorError

CHECKS = (
    "approx",
    "correlation",
    "greater",
    "less",
    "between",
    "increasing",
    "decreasing",
    "qualitative",
)
_TOP_LEVEL = ("id", "name", "kind", "protocol", "quick", "claims", "notes")
_CLAIM_FIELDS = (
    "id",
    "published",
    "metric",
    "check",
    "value",
    "nulls",
    "versus",
    "better",
    "spread",
    "extra",
    "explanation",
)
_ID = re.compile(r"^[Ee]0*(\d+)$")


@dataclass(frozen=True)
class Claim:
    """One published claim, checked against ``Outcome.values[metric]`` by its check's rule.

    ``value``: the number (approx, correlation, greater, less; a list for an element-wise
    approx), or ``[low, high]`` (between). The reading rules are fixed per check
    (:mod:`lradvisor.replication.claims`); a claim has no tolerance of its own.
    ``nulls``: path of a mapping {null name: the same metric for a null prediction};
    ``versus``: path of the prediction's own value on the nulls' footing (default: ``metric``;
    e.g. its error after the same best-in-hindsight scale the nulls get);
    ``better``: "higher" or "lower" (which way the metric improves; required with nulls).
    ``spread``: path of the measured value's spread over seeds ([low, high]), shown beside it.
    ``extra``: why this row is not part of the verdict (a deviation from the protocol, a
    relaxed reading, beyond the paper). ``explanation``: why the project expects a
    failure, shown with the verdict when the claim does not hold.
    """

    id: str
    published: str
    metric: str
    check: str
    value: Any = None
    nulls: str | None = None
    versus: str | None = None
    better: str | None = None
    spread: str | None = None
    extra: str | None = None
    explanation: str | None = None


@dataclass(frozen=True)
class Experiment:
    """One study file, validated."""

    id: str
    name: str
    kind: str
    protocol: dict[str, Any]
    quick: dict[str, Any]
    claims: tuple[Claim, ...]
    notes: str
    file: str

    def protocol_for(self, *, quick: bool) -> dict[str, Any]:
        """The protocol to run: with ``quick`` the quick mapping replaces top-level keys."""
        return {**self.protocol, **self.quick} if quick else dict(self.protocol)

    @property
    def number(self) -> int:
        return int(self.id[1:])


def canonical_id(text: str) -> str:
    """'e5', 'E05' → 'E5'; anything else is an error naming the expected form."""
    match = _ID.match(str(text).strip())
    if match is None:
        raise LRAdvisorError(f"experiment ids look like E5 or E05 (E1 … E23), but got {text!r}.")
    return f"E{int(match.group(1))}"


def default_studies_dir() -> Path:
    """The study files: the copy a wheel carries (``lradvisor/study_files``, see setup.py),
    else the repository's ``studies/`` (a checkout or editable install: src layout)."""
    import lradvisor

    package = Path(lradvisor.__file__).resolve().parent
    packaged = package / "study_files"
    return packaged if packaged.is_dir() else package.parents[1] / "studies"


def study_files(studies_dir: str | Path | None = None) -> list[Path]:
    """Every ``E*.yaml`` of the folder, in experiment order."""
    folder = Path(studies_dir) if studies_dir is not None else default_studies_dir()
    if not folder.is_dir():
        raise ConfigError(str(folder), "--studies", "a folder of study files (E01.yaml … E23.yaml)")
    files = [path for path in folder.glob("E*.yaml") if _ID.match(path.stem)]
    return sorted(files, key=lambda path: int(_ID.match(path.stem).group(1)))


def find_experiments(
    ids: Iterable[str] | str,
    *,
    studies_dir: str | Path | None = None,
    kinds: Iterable[str] | None = None,
) -> list[Experiment]:
    """Load the experiments named by ``ids`` (``"all"`` for every study file), in that order."""
    files = study_files(studies_dir)
    by_id = {canonical_id(path.stem): path for path in files}
    if isinstance(ids, str):
        ids = [ids]
    ids = list(ids)
    if not ids or [str(i).lower() for i in ids] == ["all"]:
        wanted = list(by_id)
        if not wanted:  # "all" of nothing is a mistake, not a run of zero experiments
            folder = studies_dir or default_studies_dir()
            raise LRAdvisorError(f"no study files (E01.yaml … E23.yaml) in {folder}.")
    else:
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
    missing = [i for i in wanted if i not in by_id]
    if missing:
        folder = files[0].parent if files else (studies_dir or default_studies_dir())
        raise LRAdvisorError(
            f"no study file for {', '.join(missing)} in {folder} "
            f"(known: {', '.join(by_id) or 'none'})."
        )
    return [load_experiment(by_id[i], kinds=kinds) for i in wanted]


def load_experiment(path: str | Path, *, kinds: Iterable[str] | None = None) -> Experiment:
    """Read and validate one study file; ``kinds`` (when given) are the registered kinds."""
    return parse_experiment(read_yaml(path), file=str(path), kinds=kinds)


def parse_experiment(
    raw: object, *, file: str = "<memory>", kinds: Iterable[str] | None = None
) -> Experiment:
    """Validate an already-loaded study mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "<root>", "a YAML mapping with id, name, kind, protocol, claims")
    for key in raw:
        if key not in _TOP_LEVEL:
            raise ConfigError(file, str(key), f"a known field ({', '.join(_TOP_LEVEL)})")
    experiment_id = _required(raw, "id", file)
    try:
        experiment_id = canonical_id(experiment_id)
    except LRAdvisorError:
        raise ConfigError(file, "id", "an id like E5", raw["id"]) from None
    stem = Path(file).stem
    if _ID.match(stem) and canonical_id(stem) != experiment_id:
        raise ConfigError(file, "id", f"{canonical_id(stem)} (the file's name)", raw["id"])
    name = _string(raw, "name", file)
    kind = _string(raw, "kind", file)
    known = None if kinds is None else sorted(kinds)
    if known is not None and kind not in known:
        raise ConfigError(file, "kind", f"a registered kind ({', '.join(known)})", kind)
    protocol = _mapping(raw, "protocol", file, required=True)
    quick = _mapping(raw, "quick", file, required=False)
    claims_raw = raw.get("claims")
    if not isinstance(claims_raw, list) or not claims_raw:
        raise ConfigError(file, "claims", "a non-empty list of claims", claims_raw)
    claims = tuple(_claim(item, f"claims.{i}", file) for i, item in enumerate(claims_raw))
    seen = [claim.id for claim in claims]
    if len(set(seen)) != len(seen):
        raise ConfigError(file, "claims", "distinct claim ids", seen)
    notes = raw.get("notes") or ""
    if not isinstance(notes, str):
        raise ConfigError(file, "notes", "a text", notes)
    return Experiment(
        id=experiment_id,
        name=name,
        kind=kind,
        protocol=protocol,
        quick=quick,
        claims=claims,
        notes=" ".join(notes.split()),
        file=file,
    )


def _required(raw: dict, key: str, file: str, where: str = "") -> Any:
    if key not in raw or raw[key] is None:
        raise ConfigError(file, f"{where}{key}", "this required field")
    return raw[key]


def _string(raw: dict, key: str, file: str, where: str = "") -> str:
    value = _required(raw, key, file, where)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(file, f"{where}{key}", "a non-empty text", value)
    return value


def _mapping(raw: dict, key: str, file: str, *, required: bool) -> dict:
    value = raw.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict) or (required and not value):
        raise ConfigError(file, key, "a mapping", value)
    return value


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _claim(raw: object, where: str, file: str) -> Claim:
    if not isinstance(raw, dict):
        raise ConfigError(file, where, "a mapping with id, published, metric, check", raw)
    for key in raw:
        if key not in _CLAIM_FIELDS:
            raise ConfigError(file, f"{where}.{key}", f"a known field ({', '.join(_CLAIM_FIELDS)})")
    prefix = f"{where}."
    claim = Claim(
        id=str(_required(raw, "id", file, prefix)),
        published=_string(raw, "published", file, prefix),
        metric=_string(raw, "metric", file, prefix),
        check=_string(raw, "check", file, prefix),
        value=raw.get("value"),
        nulls=raw.get("nulls"),
        versus=raw.get("versus"),
        better=raw.get("better"),
        spread=raw.get("spread"),
        extra=_extra(raw.get("extra"), prefix, file),
        explanation=raw.get("explanation"),
    )
    if claim.check not in CHECKS:
        raise ConfigError(file, f"{prefix}check", f"one of {', '.join(CHECKS)}", claim.check)
    _check_bounds(claim, prefix, file)
    return claim


def _extra(value: object, prefix: str, file: str) -> str | None:
    """Why a row is outside the verdict: a non-empty text, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            file, f"{prefix}extra", "a text saying why the row is not the verdict", value
        )
    return " ".join(value.split())


def _check_bounds(claim: Claim, prefix: str, file: str) -> None:
    """The value/nulls fields each check needs, and nothing it would ignore."""
    check, value = claim.check, claim.value
    if check == "approx":
        numbers = value if isinstance(value, list) else [value]
        if not numbers or not all(_number(v) for v in numbers):
            raise ConfigError(file, f"{prefix}value", "a number or a list of numbers", value)
    elif check == "correlation":
        if not _number(value) or not -1 < value <= 1:
            raise ConfigError(file, f"{prefix}value", "a published correlation in (-1, 1]", value)
    elif check in ("greater", "less"):
        if not _number(value):
            raise ConfigError(file, f"{prefix}value", "a number", value)
    elif check == "between":
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(_number(v) for v in value)
            and value[0] < value[1]
        ):
            raise ConfigError(file, f"{prefix}value", "[low, high] with low < high", value)
    elif value is not None:
        raise ConfigError(file, f"{prefix}value", f"no value for a {check} check", value)
    if claim.nulls is not None:
        if not isinstance(claim.nulls, str) or not claim.nulls:
            raise ConfigError(file, f"{prefix}nulls", "the path of the nulls' values", claim.nulls)
        if check in ("increasing", "decreasing", "qualitative"):
            raise ConfigError(file, f"{prefix}nulls", f"no nulls for a {check} check")
        if claim.better not in ("higher", "lower"):
            raise ConfigError(file, f"{prefix}better", "higher or lower (with nulls)", claim.better)
    elif claim.better is not None or claim.versus is not None:
        raise ConfigError(file, f"{prefix}better", "no 'better' or 'versus' without nulls")
