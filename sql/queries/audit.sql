-- The audit log of admin actions (append-only: 0026_operations.sql).

-- insert_audit --
-- $1 actor (the admin's name), $2 action, $3 target_type, $4 target_id, $5 request_id,
-- $6 amount_before, $7 amount_after, $8 details (jsonb object).
INSERT INTO audit_log
    (actor, action, target_type, target_id, request_id, amount_before, amount_after, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id

-- list_audit --
-- Newest first, keyset-paginated. $1 before id (NULL for the first page), $2 limit.
SELECT id, created_at, actor, action, target_type, target_id, request_id, amount_before,
       amount_after, details
FROM audit_log
WHERE $1::bigint IS NULL OR id < $1
ORDER BY id DESC
LIMIT $2
