"""Feature engineering for hotel bookings: booking-level features and entity aggregates.

Point-in-time rule: every aggregate row is stamped with the end ``T`` of the interval it
was computed in and uses only facts known strictly before ``T``:

* a booking counts once its ``booking_ts < T``;
* its outcome (cancelled or not) counts only once the stay has begun, i.e. its
  ``arrival_date < T`` — a cancellation is not known at booking time.

Feast's point-in-time join then gives a booking at time ``t`` the latest row stamped
``<= t``, so no feature value can carry information from after the booking.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

EVENT_TS = "event_ts"
#: Beta prior of a cancellation rate (mean 1/3): a customer with no known outcome gets
#: the prior, one with many gets close to their own rate.
_PRIOR_CANCEL, _PRIOR_N = 1.0, 3.0


def booking_table(batch: pd.DataFrame) -> pd.DataFrame:
    """The cleaned batch plus booking-level derived features (label kept for training)."""
    out = batch.copy()
    out["stay_nights"] = out["stays_weekend_nights"] + out["stays_week_nights"]
    out["arrival_month"] = out["arrival_date"].dt.month.astype("int64")
    out["arrival_weekday"] = out["arrival_date"].dt.weekday.astype("int64")
    out["total_guests"] = out["adults"] + out["children"]
    return out


def customer_history(bookings: pd.DataFrame, customers: pd.Index, as_of: datetime) -> pd.DataFrame:
    """Per customer: bookings made and outcomes known before ``as_of``, stamped ``as_of``."""
    known_before = bookings[bookings["booking_ts"] < as_of]
    known_before = known_before[known_before["customer_id"].isin(customers)]
    settled = known_before[known_before["arrival_date"] < as_of]
    made = known_before.groupby("customer_id").size()
    outcomes = settled.groupby("customer_id")["is_canceled"].agg(["size", "sum"])
    out = pd.DataFrame(index=pd.Index(sorted(customers), name="customer_id"))
    out["cust_bookings"] = made.reindex(out.index, fill_value=0).astype("int64")
    out["cust_known_outcomes"] = outcomes["size"].reindex(out.index, fill_value=0).astype("int64")
    out["cust_cancellations"] = outcomes["sum"].reindex(out.index, fill_value=0).astype("int64")
    out["cust_cancel_rate"] = (out["cust_cancellations"] + _PRIOR_CANCEL) / (
        out["cust_known_outcomes"] + _PRIOR_N
    )
    out[EVENT_TS] = pd.Timestamp(as_of)
    return out.reset_index()


def hotel_stats(bookings: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """Per hotel: recent demand, price and the cancellation rate of settled stays."""
    as_of_ts = pd.Timestamp(as_of)
    made = bookings[bookings["booking_ts"] < as_of_ts]
    last7 = made[made["booking_ts"] >= as_of_ts - timedelta(days=7)]
    last30 = made[made["booking_ts"] >= as_of_ts - timedelta(days=30)]
    settled = made[
        (made["arrival_date"] < as_of_ts) & (made["arrival_date"] >= as_of_ts - timedelta(days=30))
    ]
    hotels = sorted(bookings["hotel"].unique())
    out = pd.DataFrame(index=pd.Index(hotels, name="hotel"))
    out["hotel_bookings_7d"] = last7.groupby("hotel").size().reindex(out.index, fill_value=0)
    out["hotel_bookings_7d"] = out["hotel_bookings_7d"].astype("int64")
    out["hotel_adr_mean_30d"] = last30.groupby("hotel")["adr"].mean().reindex(out.index)
    out["hotel_lead_time_mean_30d"] = last30.groupby("hotel")["lead_time"].mean().reindex(out.index)
    rate = settled.groupby("hotel")["is_canceled"].agg(["size", "sum"]).reindex(out.index)
    rate = rate.fillna(0.0)
    out["hotel_cancel_rate_30d"] = (rate["sum"] + _PRIOR_CANCEL) / (rate["size"] + _PRIOR_N)
    out = out.astype({c: "float64" for c in out.columns if c != "hotel_bookings_7d"})
    out[EVENT_TS] = as_of_ts
    return out.reset_index()


def engineer_features(
    batch: pd.DataFrame,
    history: pd.DataFrame | None,
    *,
    interval_start: datetime,
    interval_end: datetime,
) -> dict[str, pd.DataFrame]:
    """The interval's partitions of every offline table.

    ``history`` holds the ``bookings`` table of all earlier intervals (or ``None``).
    Customers get a new history row when they booked in the interval or when one of
    their stays began in it (an outcome became known); every hotel seen so far gets a row daily.
    """
    bookings = booking_table(batch)
    everything = bookings if history is None else pd.concat([history, bookings], ignore_index=True)
    arrived = everything[
        (everything["arrival_date"] >= interval_start) & (everything["arrival_date"] < interval_end)
    ]
    changed = pd.Index(bookings["customer_id"]).union(pd.Index(arrived["customer_id"]))
    return {
        "bookings": bookings,
        "customer_history": customer_history(everything, changed.unique(), interval_end),
        "hotel_stats": hotel_stats(everything, interval_end),
    }
