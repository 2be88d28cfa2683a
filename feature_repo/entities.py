"""Entities: the keys features are looked up by."""

from feast import Entity, ValueType

# A booking is the unit we predict for; its own attributes are known at booking time.
booking = Entity(
    name="booking",
    join_keys=["booking_id"],
    value_type=ValueType.STRING,
    description="One reservation, e.g. BK-20260105-00042.",
)

# Customers come back: their history of bookings and settled outcomes is predictive.
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="The guest who made the booking.",
)

# Hotels differ in demand and price; their recent cancellation rate moves over time.
hotel = Entity(
    name="hotel",
    join_keys=["hotel"],
    value_type=ValueType.STRING,
    description="The property booked (H01-H03 city, H04-H06 resort).",
)
