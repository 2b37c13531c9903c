"""`loopwire demo`: a synthetic D2C cart-abandonment journey played as signed Customer.io webhooks.

`scenario` builds the webhook bodies (pure, seeded); `runner` plays them through a real loopwire
server into the local Amplitude sandbox and reports what happened.
"""
