"""Personal data and identifiers in a table: found by name and values, never modelled, generated afresh.

As SDV does it (sdtype `id`, and personal-data sdtypes replaced by rdt's AnonymizedFaker): a column of kind
`id` gets fresh unique keys of the real ones' format, never a real one; email, name, first_name, last_name,
phone, address and text columns get Faker values, one fake person per row (the e-mail is made from the
row's fake name). What is kept of a real column is its format and share of missing values only: no value
of it reaches the prepared splits, the model, the published rows or the logs. Each row's values come from
its seed alone, as the modelled columns do.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

PERSONAL_KINDS = ("id", "email", "name", "first_name", "last_name", "phone", "address", "text")
DROP = "drop"  # an override kind: the column is left out of the model and of the generated rows
LOCALE = "en_US"
SALT = 0x9E3779B9  # a second seed word: a row's fake values are independent of the noise its seed draws
SEED_BITS = 40  # a seed's shard and position bits (gan_core.shards): what makes it unique within a dataset
SAMPLE = 1000  # values looked at for patterns

EMAIL = re.compile(r"^[\w.+'-]+@[\w-]+(\.[\w-]+)+$")
PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
PERSON = re.compile(r"^[A-Z][a-z'-]+( [A-Z][A-Za-z'.-]*)?( [A-Z][A-Za-z'-]+)$")  # 'Ada Lovelace', "Mary J. O'Neil"
STREET = re.compile(r"^\d+[A-Za-z]?\s+\S.*\b(st|street|ave|avenue|road|rd|lane|ln|blvd|boulevard|drive|dr|way|"
                    r"court|ct|place|pl|square|sq|terrace)\b", re.IGNORECASE)
UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
# Column names (split into words) that say what a column holds.
ID_WORDS = {"id", "uuid", "guid", "ssn", "passport", "iban", "username", "login"}
NAME_OWNERS = {"", "full", "customer", "client", "person", "contact", "user", "patient", "employee", "member",
               "holder", "owner"}
FIRST_WORDS = {"first", "given", "forename"}
LAST_WORDS = {"last", "family", "surname"}
TEXT_WORDS = {"comment", "comments", "note", "notes", "message", "feedback", "free_text", "remarks"}
MIN_SHARE = 0.5  # a pattern must hold for this share of the values (names: of distinct values per row)


@dataclass(frozen=True)
class PersonalSpec:
    """A column that is generated, never modelled: its kind, why it was found so, and what is kept of it."""

    name: str
    kind: str
    why: str = "set in prepare.columns"
    null_share: float = 0.0
    params: dict = field(default_factory=dict)  # the source dtype, an id's format, a text's length

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "why": self.why, "null_share": self.null_share,
                "params": self.params}

    @classmethod
    def from_json(cls, d: dict) -> PersonalSpec:
        return cls(str(d["name"]), str(d["kind"]), str(d.get("why", "")), float(d.get("null_share", 0.0)),
                   dict(d.get("params") or {}))


# --- finding personal columns --------------------------------------------------------------------

def name_words(name: str) -> list[str]:
    """'customerEmail', 'Customer E-mail' -> ['customer', 'email']."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name)).replace("e-mail", "email").replace("E-mail", "email")
    return [w for w in re.split(r"[^0-9a-zA-Z]+", spaced.lower()) if w]


def kind_by_name(name: str) -> str | None:
    words = name_words(name)
    joined = "_".join(words)
    if not words:
        return None
    if {"email", "mail"} & set(words):
        return "email"
    if {"phone", "telephone", "mobile", "tel", "fax", "cellphone"} & set(words):
        return "phone"
    if "address" in words or "street" in words:
        return "address"
    if joined in ("username", "user_name", "screen_name", "login", "handle"):
        return "id"
    if words[-1] == "name" or joined in ("firstname", "lastname", "fullname", "surname"):
        owner = set(words[:-1])
        if owner & FIRST_WORDS or joined == "firstname":
            return "first_name"
        if owner & LAST_WORDS or joined in ("lastname", "surname"):
            return "last_name"
        if owner <= NAME_OWNERS or joined == "fullname":
            return "name"
    if words[-1] in ID_WORDS:
        return "id"
    if joined in TEXT_WORDS or words[-1] in TEXT_WORDS:
        return "text"
    return None


def _share(values: pd.Series, pattern: re.Pattern) -> float:
    return float(values.map(lambda v: bool(pattern.match(v))).mean()) if len(values) else 0.0


def detect(series: pd.Series, name: str) -> tuple[str, str] | None:
    """(kind, why) when a column looks like personal data or an identifier, else None (model it)."""
    values = series.dropna()
    if not len(values):
        return None
    integers = ptypes.is_integer_dtype(series.dtype)
    texts = values.map(type).eq(str).all() and not ptypes.is_bool_dtype(series.dtype)
    if not (texts or integers):
        return None
    distinct = values.nunique() / len(values)
    unique = distinct == 1.0 and len(values) >= 20
    by_name = kind_by_name(name)
    if integers:  # numbers are ids only when named so and distinct per row: counts and amounts stay numbers
        return ("id", "integers named like an identifier, distinct per row") if by_name == "id" and unique else None
    sample = values.astype(str).iloc[:SAMPLE]
    many = distinct >= MIN_SHARE or values.nunique() >= 50  # a handful of values is a category, not people
    if _share(sample, EMAIL) >= 0.9:
        return "email", "values are e-mail addresses"
    if by_name is not None and (many or by_name in ("email", "phone")):
        return by_name, f"the column name says {by_name.replace('_', ' ')}"
    if by_name is None and _share(sample, PHONE) >= 0.9 and sample.str.count(r"\d").ge(7).all() \
            and sample.str.contains(r"[\s().+-]").mean() >= 0.9:
        return "phone", "values are phone numbers"
    if by_name is None and many and _share(sample, PERSON) >= 0.9:
        return "name", "values are people's names"
    if by_name is None and _share(sample, STREET) >= 0.8:
        return "address", "values are street addresses"
    if unique:
        spaces = sample.str.contains(r"\s").mean()
        if spaces >= 0.5 and sample.str.len().median() >= 20:
            return "text", "free text, distinct per row"
        return "id", "strings distinct per row"
    return None


# --- what is kept of a column: its format, never a value ----------------------------------------------

def _shape(value: str) -> str:
    return re.sub(r"\d", "#", value)


def id_format(values: pd.Series) -> dict:
    """How fresh keys are written: {"integer": start}, {"uuid": True}, {"pattern", "start"} (a shape that most
    keys share, digits as '#', with a number above every real key's), else {"classes": per position}."""
    if ptypes.is_integer_dtype(values.dtype):
        return {"start": _round_above(int(values.max()))}
    text = values.astype(str)
    if _share(text.iloc[:SAMPLE], UUID) >= 0.9:
        return {"uuid": True}
    shapes = Counter(_shape(v) for v in text if "#" not in v)
    if shapes:
        shape, count = shapes.most_common(1)[0]
        if count >= MIN_SHARE * len(text) and count >= 2 and "#" in shape:
            # Every key written with the same letters and punctuation counts, whatever its digit runs' widths:
            # a fresh key's digits then spell a number no real key of that skeleton has.
            skeleton = _skeleton(shape)
            numbers = [int(re.sub(r"\D", "", v)) for v in text if "#" not in v and _skeleton(_shape(v)) == skeleton]
            return {"pattern": shape, "start": _round_above(max(numbers))}
    length = int(text.str.len().median())
    classes = "".join("A" if c.isupper() else "a" if c.isalpha() else "9" for c in text.iloc[0].ljust(length, "x"))
    return {"classes": classes[:length] or "a"}


def _skeleton(shape: str) -> str:
    return re.sub(r"#+", "#", shape)


def _round_above(largest: int) -> int:
    """A round number above LARGEST (4,999 -> 5,000; 120 -> 200): fresh keys count up from it."""
    unit = 10 ** max(len(str(max(largest, 0))) - 1, 0)
    return (max(largest, 0) // unit + 1) * unit


def phone_format(values: pd.Series) -> str | None:
    """The digit shape most numbers share ('(###) ###-####': punctuation only), or None for Faker's own."""
    shapes = Counter(_shape(v) for v in values.astype(str).iloc[:SAMPLE])
    shape, count = shapes.most_common(1)[0] if shapes else ("", 0)
    return shape if count >= MIN_SHARE * min(len(values), SAMPLE) and re.fullmatch(r"[#\s().+-]+", shape) else None


def personal_spec(series: pd.Series, name: str, kind: str, why: str) -> PersonalSpec:
    values = series.dropna()
    params: dict = {"dtype": str(series.dtype)}
    if kind == "id" and len(values):
        params |= id_format(values)
    elif kind == "phone" and len(values):
        params["format"] = phone_format(values)
    elif kind == "text":
        params["length"] = int(max(20, round(values.astype(str).str.len().median() / 10) * 10)) if len(values) else 100
    return PersonalSpec(name, kind, why, round(float(series.isna().mean()), 4), params)


# --- generating -------------------------------------------------------------------------------------

def fake_columns(specs, seeds: np.ndarray) -> dict[str, pd.Series]:
    """Per personal column, its generated values for SEEDS (one fake person per row, from the row's seed)."""
    from faker import Faker

    faker = Faker(LOCALE)
    seeds = np.asarray(seeds, dtype=np.int64)
    values: dict[str, list] = {spec.name: [] for spec in specs}
    for seed in seeds.tolist():
        faker.seed_instance(f"{seed}:{SALT}")  # a str seed: hashed by sha512, the same in every process
        rng = np.random.default_rng([seed, SALT])
        person = _Person(faker)
        for spec in specs:
            missing = spec.null_share and rng.random() < spec.null_share
            values[spec.name].append(None if missing else _value(spec, faker, person, int(seed), rng))
    return {spec.name: _typed(values[spec.name], spec) for spec in specs}


class _Person:
    """One fake person per row, made on first use: every name and e-mail column of the row is theirs."""

    def __init__(self, faker):
        self.faker, self._names = faker, None

    @property
    def names(self) -> tuple[str, str]:
        if self._names is None:
            self._names = (self.faker.first_name(), self.faker.last_name())
        return self._names

    def email(self, number: int) -> str:
        first, last = (re.sub(r"[^a-z]", "", n.lower()) for n in self.names)
        # example.com/.net/.org are reserved (RFC 2606): never a real person's mailbox.
        return f"{first}.{last}{number}@{self.faker.safe_domain_name()}"


def _value(spec: PersonalSpec, faker, person: _Person, seed: int, rng: np.random.Generator):
    kind = spec.kind
    if kind == "id":
        return fresh_id(spec.params, seed, rng)
    if kind == "email":
        return person.email(int(rng.integers(1, 100)))
    if kind == "name":
        return " ".join(person.names)
    if kind == "first_name":
        return person.names[0]
    if kind == "last_name":
        return person.names[1]
    if kind == "phone":
        return faker.numerify(spec.params["format"]) if spec.params.get("format") else faker.phone_number()
    if kind == "address":
        return faker.address().replace("\n", ", ")
    return faker.text(max_nb_chars=max(20, int(spec.params.get("length", 100))))


def fresh_id(params: dict, seed: int, rng: np.random.Generator):
    """A key no real row has: a number counting up from above the real keys' largest by the seed (unique per
    row of a dataset), written in their format; UUIDs and other shapes are drawn at random from the seed."""
    number = params.get("start", 0) + (seed & ((1 << SEED_BITS) - 1))
    if "pattern" in params:
        return _write(params["pattern"], number)
    if params.get("uuid"):
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    if "classes" in params:
        pools = {"A": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "a": "abcdefghijklmnopqrstuvwxyz", "9": "0123456789"}
        return "".join(pools[c][rng.integers(len(pools[c]))] for c in params["classes"])
    return number


def _write(pattern: str, number: int) -> str:
    """NUMBER's digits into the pattern's '#'s ('C-####', 42 -> 'C-0042'); digits beyond them widen the first run."""
    width = pattern.count("#")
    digits = str(number).zfill(width)
    head, tail = digits[:len(digits) - width], iter(digits[len(digits) - width:])
    written = "".join(next(tail) if c == "#" else c for c in pattern)
    at = pattern.index("#")
    return written[:at] + head + written[at:]


def _typed(values: list, spec: PersonalSpec) -> pd.Series:
    dtype = spec.params.get("dtype", "object")
    if spec.kind == "id" and ("start" in spec.params and "pattern" not in spec.params):
        return pd.Series(values, dtype="Int64" if None in values or dtype == "Int64" else dtype)
    series = pd.Series(values, dtype=object)
    try:
        return series.astype(dtype) if dtype != "object" else series
    except (TypeError, ValueError):
        return series


def complete_rows(frame: pd.DataFrame, order: list[str], specs, seeds: np.ndarray) -> pd.DataFrame:
    """FRAME (the modelled columns) with the personal columns generated for SEEDS, in the table's column order."""
    if not specs:
        return frame
    fakes = fake_columns(specs, seeds)
    columns = {name: frame[name].reset_index(drop=True) if name in frame.columns else fakes[name] for name in order}
    return pd.DataFrame(columns, columns=order)
