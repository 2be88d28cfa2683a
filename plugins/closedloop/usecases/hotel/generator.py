"""Seeded synthetic hotel bookings, one landed batch per day, with optional drift.

Each day's bookings depend only on ``(day, seed, rows_per_day, drift)``: every random
number comes from a generator seeded with ``(seed, day ordinal)``, drawn as one block
before any drift is applied, so a drift of strength 0 reproduces the undrifted day
exactly. Customers come from a fixed population (derived from ``seed`` only) with a
skewed popularity and a latent cancellation propensity, so their history is predictive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from closedloop.core.files import write_bytes

if TYPE_CHECKING:
    from pathlib import Path

N_CUSTOMERS = 8_000
HOTELS = np.array(["H01", "H02", "H03", "H04", "H05", "H06"], dtype=object)
HOTEL_P = [0.22, 0.20, 0.18, 0.15, 0.13, 0.12]
IS_RESORT = np.array([False, False, False, True, True, True])
HOTEL_PRICE = np.array([105.0, 125.0, 90.0, 140.0, 170.0, 115.0])
HOTEL_LOGIT = np.array([0.35, 0.45, 0.25, -0.25, -0.35, -0.15])
# Market segments; the last one ("Aviation") only appears under drift.new_category.
SEGMENTS = np.array(
    ["Online TA", "Offline TA/TO", "Direct", "Corporate", "Groups", "Aviation"], dtype=object
)
SEGMENT_P = np.array([0.46, 0.20, 0.12, 0.06, 0.16])
# Median lead times of ~4-30 days: shorter than the public data set's (~70 days), so that
# outcomes settle within the few weeks a demo or a test simulates (an outcome is known
# once the stay begins; see the use case's label.known_at).
SEGMENT_LEAD_MU = np.array([2.6, 3.1, 1.9, 1.4, 3.4, 1.0])
SEGMENT_PRICE = np.array([1.0, 0.92, 1.08, 0.85, 0.78, 0.80])
SEGMENT_LOGIT = np.array([0.35, -0.10, -0.55, -0.70, 0.20, -0.60])
CHANNELS = np.array(["TA/TO", "Direct", "Corporate", "GDS"], dtype=object)
CHANNEL_P = np.array(
    [[0.97, 0.01, 0.00, 0.02], [0.94, 0.02, 0.01, 0.03], [0.04, 0.95, 0.01, 0.00],
     [0.05, 0.07, 0.85, 0.03], [0.80, 0.12, 0.08, 0.00], [0.00, 0.05, 0.75, 0.20]]
)  # fmt: skip
DEPOSITS = np.array(["No Deposit", "Non Refund", "Refundable"], dtype=object)
DEPOSIT_P = np.array(
    [[0.96, 0.03, 0.01], [0.72, 0.26, 0.02], [0.95, 0.04, 0.01],
     [0.94, 0.04, 0.02], [0.55, 0.42, 0.03], [0.98, 0.01, 0.01]]
)  # fmt: skip
CUSTOMER_TYPES = np.array(["Transient", "Transient-Party", "Contract", "Group"], dtype=object)
CUSTOMER_TYPE_P = np.array(
    [[0.80, 0.15, 0.04, 0.01], [0.55, 0.30, 0.14, 0.01], [0.82, 0.15, 0.01, 0.02],
     [0.60, 0.35, 0.05, 0.00], [0.20, 0.55, 0.10, 0.15], [0.90, 0.10, 0.00, 0.00]]
)  # fmt: skip
WEEKDAY_VOLUME = np.array([1.10, 1.08, 1.04, 1.00, 0.95, 0.85, 0.90])  # Monday first
INTERCEPT = -2.1


@dataclass(frozen=True)
class DriftSpec:
    """What changes from ``start`` on; strengths are in [0, 1]."""

    start: date | None = None
    covariate: float = 0.0
    concept: float = 0.0
    new_category: bool = False
    ramp_days: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.covariate <= 1.0 and 0.0 <= self.concept <= 1.0):
            raise ValueError("drift strengths must lie in [0, 1]")
        if self.ramp_days < 0:
            raise ValueError("ramp_days must not be negative")

    def weight(self, day: date) -> float:
        """Share of full strength that applies on ``day`` (0 before ``start``)."""
        if self.start is None or day < self.start:
            return 0.0
        if self.ramp_days <= 0:
            return 1.0
        return min(1.0, ((day - self.start).days + 1) / self.ramp_days)


class _Population(NamedTuple):
    ids: np.ndarray
    cdf: np.ndarray
    propensity: np.ndarray
    repeated: np.ndarray


@lru_cache(maxsize=16)
def _population(seed: int) -> _Population:
    """The fixed customer population of a seed: ids, popularity, propensity, loyalty."""
    rng = np.random.default_rng([seed, 0])
    propensity = rng.standard_normal(N_CUSTOMERS)
    repeated = rng.random(N_CUSTOMERS) < _sigmoid(-2.4 - 0.6 * propensity)
    rank = rng.permutation(N_CUSTOMERS)
    weights = 1.0 / (rank + 20.0) ** 1.05
    ids = np.array([f"C{i:06d}" for i in range(N_CUSTOMERS)], dtype=object)
    return _Population(ids, np.cumsum(weights) / weights.sum(), propensity, repeated)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _pick(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Index of the category each uniform falls into; ``probs`` is per row or shared."""
    cdf = np.cumsum(np.broadcast_to(probs, (len(u), probs.shape[-1])), axis=1)
    cdf = cdf / cdf[:, -1:]
    return np.minimum((u[:, None] >= cdf).sum(axis=1), probs.shape[-1] - 1)


def _poisson(u: np.ndarray, lam: np.ndarray | float, cap: int) -> np.ndarray:
    """Poisson draws by inverting the CDF at ``u``, capped at ``cap``."""
    lam = np.broadcast_to(np.asarray(lam, dtype=float), u.shape)
    term = np.exp(-lam)
    cdf, out = term.copy(), np.zeros(u.shape, dtype=np.int64)
    for k in range(1, cap + 1):
        above = u > cdf
        if not above.any():
            break
        out += above
        term = term * lam / k
        cdf = cdf + term
    return out


def _cancel_logit(df: pd.DataFrame, propensity: np.ndarray, concept: float) -> np.ndarray:
    """Log-odds of cancellation; ``concept`` reshapes the effects of the main drivers."""
    lead = df["lead_time"].to_numpy(float)
    online = (df["market_segment"] == "Online TA").to_numpy()
    non_refund = (df["deposit_type"] == "Non Refund").to_numpy()
    hotel = pd.Index(HOTELS).get_indexer(df["hotel"])
    segment = pd.Index(SEGMENTS).get_indexer(df["market_segment"])
    long_stay = (df["stays_weekend_nights"] + df["stays_week_nights"] > 4).to_numpy()
    logit = (
        INTERCEPT
        + 0.4 * concept
        + (1.8 - 2.6 * concept) * (1.0 - np.exp(-lead / 30.0))
        + (3.2 - 2.2 * concept) * non_refund
        - 0.4 * (df["deposit_type"] == "Refundable").to_numpy()
        + (-0.55 + 1.0 * concept) * df["total_of_special_requests"].to_numpy()
        + 0.7 * (1.0 - concept) * (online & (lead > 20))
        + 2.2 * concept * long_stay
        + 0.9 * np.log1p(df["previous_cancellations"].to_numpy())
        - 1.0 * df["is_repeated_guest"].to_numpy()
        + (0.006 - 0.012 * concept) * (df["adr"].to_numpy() - 120.0)
        + HOTEL_LOGIT[hotel]
        + SEGMENT_LOGIT[segment]
        + 0.9 * propensity
    )
    return logit


#: the largest daily volume asked for (benchmarks/scale.py's 10M: 500,000 a day)
MAX_ROWS_PER_DAY = 1_000_000


def generate_day(
    day: date, *, seed: int = 7, rows_per_day: int = 400, drift: DriftSpec | None = None
) -> pd.DataFrame:
    """The bookings made on ``day``, one row per booking, in the use case's column order."""
    if not 1 <= rows_per_day <= MAX_ROWS_PER_DAY:
        raise ValueError(f"rows_per_day must lie in [1, {MAX_ROWS_PER_DAY}], got {rows_per_day}")
    weight = drift.weight(day) if drift else 0.0
    covariate = drift.covariate * weight if drift else 0.0
    concept = drift.concept * weight if drift else 0.0
    aviation_share = 0.10 * weight if drift and drift.new_category else 0.0
    rng = np.random.default_rng([seed, day.toordinal()])
    volume = WEEKDAY_VOLUME[day.weekday()]
    n = max(1, round(rows_per_day * volume * (1.0 + 0.03 * rng.standard_normal())))
    u, z = rng.random((n, 15)), rng.standard_normal((n, 2))
    people = _population(seed)

    cust = np.minimum(np.searchsorted(people.cdf, u[:, 0]), N_CUSTOMERS - 1)
    hotel = _pick(u[:, 1], np.array(HOTEL_P))
    resort = IS_RESORT[hotel]
    seg_p = SEGMENT_P * (1.0 - 0.5 * covariate) + 0.5 * covariate * np.eye(5)[0]
    segment = np.where(u[:, 3] < aviation_share, 5, _pick(u[:, 2], seg_p))
    lead = np.clip(np.round(np.exp(SEGMENT_LEAD_MU[segment] + 0.5 * covariate + 1.1 * z[:, 0])
                            - 1.0), 0, 730).astype(np.int64)  # fmt: skip
    seconds = np.sort(np.floor(u[:, 4] * 86_400).astype(np.int64))
    midnight = pd.Timestamp(day, tz="UTC")
    arrival = midnight + pd.to_timedelta(lead, unit="D")
    weekend = _poisson(u[:, 5], np.where(resort, 1.4, 0.8), 20)
    week = _poisson(u[:, 6], np.where(resort, 3.2, 2.0), 50)
    week = np.where(weekend + week == 0, 1, week)
    adults = 1 + _poisson(u[:, 7], np.where(segment == 3, 0.1, 0.8), 9)
    children = _poisson(u[:, 8], np.where(resort, 0.4, 0.12), 10)
    season = 1.0 + np.where(resort, 0.35, 0.12) * np.cos(2 * np.pi * (arrival.month - 8) / 12)
    adr = (HOTEL_PRICE[hotel] * season.to_numpy() * SEGMENT_PRICE[segment]
           * (1.0 + 0.08 * (adults - 2) + 0.10 * children) * (0.7 + 0.3 * volume)
           * np.exp(0.15 * z[:, 1]) * (1.0 + 0.25 * covariate))  # fmt: skip
    frame = pd.DataFrame(
        {
            # five digits up to 99,999 a day (the ids of smaller days never change)
            "booking_id": [f"BK-{day:%Y%m%d}-{i:0{max(5, len(str(n - 1)))}d}" for i in range(n)],
            "customer_id": people.ids[cust],
            "hotel": HOTELS[hotel],
            "booking_ts": midnight + pd.to_timedelta(seconds, unit="s"),
            "arrival_date": arrival,
            "lead_time": lead,
            "stays_weekend_nights": weekend,
            "stays_week_nights": week,
            "adults": adults,
            "children": children,
            "adr": np.clip(np.round(adr, 2), 1.0, 5000.0),
            "market_segment": SEGMENTS[segment],
            "distribution_channel": CHANNELS[_pick(u[:, 9], CHANNEL_P[segment])],
            "deposit_type": DEPOSITS[_pick(u[:, 10], DEPOSIT_P[segment])],
            "customer_type": CUSTOMER_TYPES[_pick(u[:, 11], CUSTOMER_TYPE_P[segment])],
            "previous_cancellations": _poisson(
                u[:, 12], 0.15 * np.exp(0.9 * people.propensity[cust]), 50
            ),
            "total_of_special_requests": _poisson(
                u[:, 13], 0.45 + 0.3 * (segment == 0) + 0.3 * (children > 0), 10
            ),
            "is_repeated_guest": people.repeated[cust].astype(np.int64),
        }
    )
    logit = _cancel_logit(frame, people.propensity[cust], concept)
    frame["is_canceled"] = (u[:, 14] < _sigmoid(logit)).astype(np.int64)
    return frame


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    """A generated frame as landed CSV: ISO-8601 timestamps with offset, plain dates."""
    out = frame.copy()
    out["booking_ts"] = out["booking_ts"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    out["arrival_date"] = out["arrival_date"].dt.strftime("%Y-%m-%d")
    return out.to_csv(index=False, lineterminator="\n").encode()


def write_batches(
    landing_dir: Path,
    start: date,
    days: int,
    *,
    seed: int = 7,
    rows_per_day: int = 400,
    drift: DriftSpec | None = None,
) -> list[Path]:
    """Write ``days`` daily batches from ``start`` as ``<YYYY-MM-DD>.csv``, atomically."""
    landing_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        data = _csv_bytes(generate_day(day, seed=seed, rows_per_day=rows_per_day, drift=drift))
        path = landing_dir / f"{day:%Y-%m-%d}.csv"
        write_bytes(path, data)
        paths.append(path)
    return paths
