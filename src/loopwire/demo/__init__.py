"""`loopwire demo`: a synthetic D2C cart-abandonment story, played through a real loopwire in every
direction it carries data.

`scenario` and `shop` build what the shoppers, the storefront, the app and Customer.io send (pure,
seeded); `senders` sends it the way each really would (signed webhooks, the official Segment and
Amplitude libraries); `wiring` writes the config and arranges the sandboxes' faults; `runner` plays
it all into the Amplitude, Customer.io and Segment sandboxes; `report` checks what happened,
`experiment` checks the holdout and sets loopwire's lift report beside the scenario's true lift, and
`render` prints it, ending with the lift.
"""
