-- The durable state of the CYPHONIC cloud (services/src/store/mod.rs).
-- PostgreSQL flavour: keep it in step with sqlite/0001_init.sql (same tables, columns,
-- constraints; only the type names differ). Never edit a released migration: add a new
-- numbered file to both directories.

-- The deployment settings: one row, fixed at first start.
CREATE TABLE deployment (
    id             BIGINT  NOT NULL PRIMARY KEY CHECK (id = 1),
    overlay_domain TEXT    NOT NULL,
    ipv4_prefix    TEXT    NOT NULL,          -- e.g. 100.64.0.0/10
    ipv6_prefix    TEXT    NOT NULL,          -- e.g. fd12:3456:789a::/48
    created_at     BIGINT  NOT NULL           -- unix seconds
);

-- Nodes and general nodes. Every identity column is unique; addresses are canonical
-- text (Rust's Display of Ipv4Addr / Ipv6Addr), the NodeID a lower-case UUID.
CREATE TABLE devices (
    device_id    TEXT    NOT NULL PRIMARY KEY,     -- DNS label, lower case
    fqdn         TEXT    NOT NULL UNIQUE,          -- <device_id>.<overlay domain>
    kind         TEXT    NOT NULL,                 -- 'node' | 'general_node'
    adapter_fqdn TEXT,                             -- general nodes: their adapter
    mac          TEXT    UNIQUE,                   -- general nodes: aa:bb:cc:dd:ee:ff
    ipv6_enabled BIGINT  NOT NULL CHECK (ipv6_enabled IN (0, 1)),
    node_id      TEXT    NOT NULL UNIQUE,
    virtual_ipv4 TEXT    NOT NULL UNIQUE,
    virtual_ipv6 TEXT    NOT NULL UNIQUE,
    created_at   BIGINT  NOT NULL,
    revoked_at   BIGINT,                          -- NULL while active
    CHECK ((kind = 'node' AND adapter_fqdn IS NULL AND mac IS NULL)
        OR (kind = 'general_node' AND adapter_fqdn IS NOT NULL AND mac IS NOT NULL))
);
CREATE INDEX devices_by_adapter ON devices (adapter_fqdn);

-- One-time enrollment tokens: only the SHA-256 of the secret is kept.
CREATE TABLE enrollment_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,       -- hex SHA-256
    device_id  TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,                   -- refused from this time on
    used_at    BIGINT                              -- NULL until used
);
CREATE INDEX enrollment_tokens_by_device ON enrollment_tokens (device_id);

-- Certificates the CA issued to devices.
CREATE TABLE certificates (
    serial      TEXT    NOT NULL PRIMARY KEY,      -- lower-case hex, no leading zeros
    device_id   TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    not_after   BIGINT  NOT NULL,
    recorded_at BIGINT  NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX certificates_by_device ON certificates (device_id);
