"""The probes' network layer: the egress policy, HTTP clients pooled by TLS settings that dial
only what the policy allowed, bounded bodies, per-request phase tracing, and the token
services (OAuth, the clouds' credential exchanges). No provider's dialect lives here."""
