"""The open-set rule: how similar a face must be to a person's template to get their name.

A stranger has more chances to look like someone the more people are enrolled, and
the spread of a template's similarities depends on how many photos it averages; so
the threshold depends on both, and about the same share of strangers is named whatever
the gallery's size. Some templates sit nearer the crowd of all faces than others and
draw far more strangers than their share; so each person's threshold also rises with
how like the population's mean face their template is (the mean of strangers'
embeddings, a summary kept with the head, so this works with one person enrolled).
Calibrated per head by simulation (model.training.openset) and stored in its sidecar
("open_set").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class OpenSetRule:
    """threshold = base[k - 1] for a person with k photos (the last entry for more), plus what the number
    of people enrolled adds. Calibrated per size (`sizes`, increasing from 1), row k - 1 of `offsets` holds
    what each size adds for k photos, straight between sizes in ln(people), and past the last size
    per_log_people more per unit of ln(people). Without sizes (older heads): per_log_people * ln(people).
    With a population mean m, a template t adds population_weight * (t . m - m . m): the threshold rises for
    templates that look like everybody. Without one (older heads) nothing is added.
    """

    base: tuple[float, ...]
    per_log_people: float
    sizes: tuple[int, ...] = ()
    offsets: tuple[tuple[float, ...], ...] = ()
    population: tuple[float, ...] = ()
    population_weight: float = 0.0

    @classmethod
    def from_info(cls, info: dict) -> "OpenSetRule":
        by_size = info.get("people_offsets", {})
        population = info.get("population", {})
        return cls(tuple(float(v) for v in info["base"]), float(info["per_log_people"]),
                   tuple(int(n) for n in by_size.get("people", ())),
                   tuple(tuple(float(v) for v in row) for row in by_size.get("by_photos", ())),
                   tuple(float(v) for v in population.get("mean", ())), float(population.get("weight", 0.0)))

    def info(self) -> dict:
        """The sidecar's form (`from_info` reads it back)."""
        found: dict = {"base": list(self.base), "per_log_people": self.per_log_people}
        if self.sizes:
            found["people_offsets"] = {"people": list(self.sizes), "by_photos": [list(row) for row in self.offsets]}
        if self.population:
            found["population"] = {"weight": self.population_weight, "mean": list(self.population)}
        return found

    def crowd_offsets(self, templates: NDArray[np.floating] | None) -> NDArray[np.float64] | float:
        """What each template [P, D] adds for looking like the population's mean face (0 without templates)."""
        if not self.population or not self.population_weight or templates is None:
            return 0.0
        return self.population_weight * (np.asarray(templates) @ self._mean - float(self._mean @ self._mean))

    @cached_property
    def _mean(self) -> NDArray[np.float32]:
        """The population's mean face as an array, made once per rule (matching asks for it every frame)."""
        return np.asarray(self.population, dtype=np.float32)

    def people_offsets(self, people: int) -> NDArray[np.float64]:
        """What `people` enrolled add to the threshold, per entry of `base`."""
        log_people = float(np.log(max(1, people)))
        if not self.sizes:
            return np.full(len(self.base), self.per_log_people * log_people)
        logs = np.log(self.sizes)
        past = max(0.0, log_people - logs[-1]) * self.per_log_people
        return np.array([np.interp(log_people, logs, row) for row in self.offsets]) + past

    def thresholds(self, photo_counts: NDArray[np.int64], people: int | None = None,
                   templates: NDArray[np.floating] | None = None) -> NDArray[np.float64]:
        """One threshold per given person's photo count and template (rows of `templates`, unit vectors);
        `people` enrolled in all (default: len(photo_counts)). Without templates, those of a typical face."""
        index = np.clip(np.asarray(photo_counts) - 1, 0, len(self.base) - 1)
        people = len(photo_counts) if people is None else people
        by_count = (np.asarray(self.base, dtype=np.float64) + self.people_offsets(people))[index]
        return by_count + self.crowd_offsets(templates)


def limits(rule: float | OpenSetRule, photo_counts: NDArray[np.int64], people: int | None = None,
           templates: NDArray[np.floating] | None = None) -> NDArray[np.float64]:
    """What each person must reach under `rule`: a fixed similarity for all, or the OpenSetRule's thresholds."""
    if isinstance(rule, OpenSetRule):
        return rule.thresholds(photo_counts, people, templates)
    return np.full(len(photo_counts), float(rule))
