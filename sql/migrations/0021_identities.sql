-- End-user sign-in: a user may be known by an identity provider's subject (the JWT `sub`),
-- unique per issuer. Such a user is created on first sight and may have no email.
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;

CREATE TABLE user_identities (
    issuer      text NOT NULL,
    subject     text NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_identities_pkey PRIMARY KEY (issuer, subject),
    CONSTRAINT user_identities_subject_not_blank CHECK (length(subject) > 0)
);
CREATE INDEX user_identities_user_id_idx ON user_identities (user_id);
