"""Your own strictness: what a stricter or looser naming rule does on this gallery, and the one the user chose.

Strictness is an offset added to every similarity the model's open-set rule asks
for (model.recognizer.stricter); 0 is the calibrated rule. It is stored in the
database (`stored_settings`, key "strictness") and applied to the running model
at once; FACES_THRESHOLD, when set, fixes the threshold and the offset is not used.

The outlook is worked out from the user's own data, without running the model:
- people's photos: each stored photo is matched against the gallery without it
  (leave one out), so "names N% of your people's photos" is what a new photo
  like those would get; people with a single photo cannot be judged this way;
- strangers: each enrolled person in turn is taken out of the gallery and their
  photos matched against everybody else (a person the app has never seen is a
  stranger), plus the faces the inbox keeps (faces nobody was named for, which
  can include your own people when they were not recognised).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from model.gallery import templates
from model.open_set import OpenSetRule, limits
from model.recognizer import stricter
from webapp.db import from_blob, transaction

KEY = "strictness"
# Offsets the page offers, looser to stricter (similarity units; CelebA's strangers' scores spread ~0.09).
CHOICES = tuple(round(value, 2) for value in np.arange(-0.10, 0.1001, 0.02))
LIMIT = 0.3  # an offset further from 0 than this is refused
# Per person: a nearest other person this close to their template (similarity over their own threshold) is a
# look-alike risk, and fewer photos than this are thin.
LOOK_ALIKE_MARGIN = 0.05
GOOD_PHOTO_COUNT = 3


class StrictnessError(ValueError):
    """A strictness that can't be used; the message says why."""


@dataclass(frozen=True)
class Outlook:
    """What one offset does: shares of people's photos named right and wrong, strangers named per 1,000."""

    offset: float
    members_named: float | None  # None: no person has two photos, so nothing to judge
    members_wrong: float | None
    strangers_per_1000: float | None  # None: no strangers to judge (fewer than 2 people and an empty inbox)


# --- the stored choice -------------------------------------------------------------


def stored(db: sqlite3.Connection) -> float:
    row = db.execute("SELECT value FROM stored_settings WHERE key = ?", (KEY,)).fetchone()
    return float(row["value"]) if row is not None else 0.0


def check(raw: object) -> float:
    """The offset in a request, checked: a finite number within +-LIMIT."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise StrictnessError("strictness must be a number, e.g. 0.04 (stricter) or -0.02 (looser)")
    try:
        value = float(raw)
    except ValueError:
        raise StrictnessError(f"strictness must be a number, not {str(raw)[:40]!r}") from None
    if not np.isfinite(value) or abs(value) > LIMIT:
        raise StrictnessError(f"strictness must be between -{LIMIT} and {LIMIT}")
    return round(value, 3)


def store(db: sqlite3.Connection, value: float) -> None:
    with transaction(db):
        db.execute("INSERT INTO stored_settings (key, value) VALUES (?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (KEY, repr(value)))


# --- what a choice would do -------------------------------------------------------------


@dataclass(frozen=True)
class _Scores:
    """The gallery's people worked out once: each photo's person column and its similarity to every template."""

    counts: NDArray[np.int64]  # photos per person [P]
    centres: NDArray[np.float32]  # their templates [P, D]
    sums: NDArray[np.float64]  # each person's summed photo embeddings [P, D]
    column: NDArray[np.int64]  # each photo's person [M]
    sims: NDArray[np.float64]  # each photo against each template [M, P]

    @classmethod
    def of(cls, vectors: NDArray[np.float32], person_ids: NDArray[np.int64]) -> "_Scores":
        people, centres, counts = templates(vectors, person_ids)
        column = np.searchsorted(people, person_ids)
        sums = np.zeros((len(people), vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, column, vectors)
        return cls(counts, centres, sums, column, vectors.astype(np.float64) @ centres.T.astype(np.float64))


def outlook(
    vectors: NDArray[np.float32],
    person_ids: NDArray[np.int64],
    strangers: NDArray[np.float32],
    rule: float | OpenSetRule,
    offsets: tuple[float, ...] = CHOICES,
) -> list[Outlook]:
    """One Outlook per offset (see the module docstring).

    :param vectors: float32 [M, D] unit embeddings of the enrolled photos; person_ids int64 [M].
    :param strangers: float32 [S, D] unit embeddings of faces known to be nobody enrolled (the inbox).
    :param rule: the model's rule at strictness 0.
    """
    scores = _Scores.of(vectors, person_ids)
    own_sim, own_limit, rival_sim, rival_limit = _left_one_out(vectors, scores, rule)
    away_sim, away_limit = _left_person_out(scores, rule)
    inbox_sim, inbox_limit = _inbox(strangers, scores, rule)
    stranger_sim = np.concatenate([away_sim, inbox_sim])
    stranger_limit = np.concatenate([away_limit, inbox_limit])
    results = []
    for offset in offsets:
        named = (own_sim >= own_limit + offset) & (own_sim > rival_sim)
        wrong = (rival_sim >= rival_limit + offset) & (rival_sim >= own_sim)
        results.append(Outlook(
            offset=float(offset),
            members_named=float(named.mean()) if len(own_sim) else None,
            members_wrong=float(wrong.mean()) if len(own_sim) else None,
            strangers_per_1000=float(1000 * (stranger_sim >= stranger_limit + offset).mean())
            if len(stranger_sim) else None,
        ))
    return results


def _left_one_out(vectors, scores: _Scores, rule):
    """For each photo of a person with 2+ photos: its similarity to its own template made without it, and to
    the best other person's template, with the limits each must reach."""
    people = len(scores.counts)
    keep = scores.counts[scores.column] >= 2
    v, col = vectors[keep].astype(np.float64), scores.column[keep]
    own_sum = scores.sums[col] - v
    own_centre = own_sum / np.maximum(np.linalg.norm(own_sum, axis=1), 1e-12)[:, None]
    own_sim = np.einsum("ij,ij->i", own_centre, v)
    own_limit = limits(rule, scores.counts[col] - 1, people, own_centre)
    if people < 2:
        return own_sim, own_limit, np.full(len(v), -np.inf), np.full(len(v), np.inf)
    sims = scores.sims[keep].copy()
    sims[np.arange(len(v)), col] = -np.inf
    rival = sims.argmax(axis=1)
    rival_limit = limits(rule, scores.counts, people, scores.centres)[rival]
    return own_sim, own_limit, sims[np.arange(len(v)), rival], rival_limit


def _left_person_out(scores: _Scores, rule):
    """Each person taken out of the gallery in turn: their photos' best similarity among the others."""
    people = len(scores.counts)
    if people < 2:
        return np.zeros(0), np.zeros(0)
    sims = scores.sims.copy()
    rows = np.arange(len(sims))
    sims[rows, scores.column] = -np.inf
    best = sims.argmax(axis=1)
    return sims[rows, best], limits(rule, scores.counts, people - 1, scores.centres)[best]


def _inbox(strangers, scores: _Scores, rule):
    """The inbox's faces: their best similarity among everybody."""
    people = len(scores.counts)
    if people == 0 or len(strangers) == 0:
        return np.zeros(0), np.zeros(0)
    sims = strangers @ scores.centres.T
    best = sims.argmax(axis=1)
    return sims[np.arange(len(strangers)), best], limits(rule, scores.counts, people, scores.centres)[best]


# --- how well each person is enrolled ----------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    """One person's enrollment: photos, poses covered, the nearest other person, and a hint."""

    person_id: int
    photos: int
    poses: tuple[str, ...]  # poses of the photos whose pose was recorded at enrollment
    nearest_id: int | None
    nearest_similarity: float | None  # cosine of the two people's templates
    limit: float  # what a face must reach to be given this person's name now
    hint: str | None


def enrollments(vectors, person_ids, poses: dict[int, list[str]], rule, offset: float) -> list[Enrollment]:
    """Per person (in id order): photo count, recorded poses, nearest other person and a hint when more photos
    would help. poses: person id -> the poses of their photos (None where not recorded)."""
    people, centres, counts = templates(vectors, person_ids)
    own = limits(stricter(rule, offset), counts, len(people), centres)
    sims = centres @ centres.T
    np.fill_diagonal(sims, -np.inf)
    found = []
    for i, person in enumerate(people.tolist()):
        nearest = int(sims[i].argmax()) if len(people) > 1 else None
        near_sim = float(sims[i, nearest]) if nearest is not None else None
        covered = tuple(sorted({pose for pose in poses.get(person, []) if pose}))
        found.append(Enrollment(person, int(counts[i]), covered,
                                int(people[nearest]) if nearest is not None else None, near_sim, float(own[i]),
                                _hint(int(counts[i]), covered, near_sim, float(own[i]))))
    return found


def _hint(photos: int, poses: tuple[str, ...], nearest: float | None, limit: float) -> str | None:
    if nearest is not None and nearest >= limit - LOOK_ALIKE_MARGIN:
        return "looks much like another person: add photos in other light and poses to tell them apart"
    if photos < GOOD_PHOTO_COUNT:
        return f"only {photos} photo{'s' if photos > 1 else ''}: {GOOD_PHOTO_COUNT} or more name them more surely"
    if poses and len(poses) < 2:
        return "every photo looks the same way: add one turned a little left or right"
    return None


# --- the report the page and the API show ---------------------------------------------


def report(db: sqlite3.Connection, backbone: str, recognizer) -> dict:
    """The outlook per offset (one row when FACES_THRESHOLD fixes it) and each person's enrollment."""
    fixed = recognizer.threshold_is_fixed
    rule = recognizer.rule if fixed else stricter(recognizer.rule, -recognizer.strictness)  # at strictness 0
    vectors, person_ids, poses = gallery_rows(db, backbone)
    strangers = inbox_vectors(db, backbone, vectors.shape[1]) if len(vectors) else vectors
    names = dict(db.execute("SELECT id, name FROM people").fetchall())
    people = [
        {**asdict(entry), "name": names.get(entry.person_id), "nearest_name": names.get(entry.nearest_id)}
        for entry in enrollments(vectors, person_ids, poses, rule, 0.0 if fixed else recognizer.strictness)
    ] if len(vectors) else []
    offsets = (0.0,) if fixed else CHOICES
    return {
        "strictness": None if fixed else recognizer.strictness,
        "fixed_threshold": recognizer.rule if fixed else None,
        "photos": int(len(vectors)),
        "inbox_faces": int(len(strangers)),
        "people": people,
        "outlook": [asdict(o) for o in outlook(vectors, person_ids, strangers, rule, offsets)] if len(vectors) else [],
    }


# --- reading the data --------------------------------------------------------------------


def gallery_rows(db: sqlite3.Connection, backbone: str):
    """(embeddings [M, D], person ids [M], {person id: poses}) of the photos embedded by `backbone`."""
    rows = db.execute("SELECT person_id, embedding, pose FROM photos WHERE backbone = ? ORDER BY id",
                      (backbone,)).fetchall()
    poses: dict[int, list[str]] = {}
    for row in rows:
        poses.setdefault(row["person_id"], []).append(row["pose"])
    if not rows:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64), poses
    vectors = np.stack([from_blob(row["embedding"]) for row in rows])
    return vectors, np.array([row["person_id"] for row in rows], dtype=np.int64), poses


def inbox_vectors(db: sqlite3.Connection, backbone: str, dim: int) -> NDArray[np.float32]:
    rows = db.execute("SELECT embedding FROM unknown_faces WHERE backbone = ?", (backbone,)).fetchall()
    vectors = [from_blob(row["embedding"]) for row in rows]
    vectors = [v for v in vectors if v.shape == (dim,)]
    return np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
