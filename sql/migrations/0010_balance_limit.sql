-- The balance limit: an account holds at most 10^15 credits, spendable plus held
-- (balance + reserved). 10^15 is below 2^53, so every balance, amount and sum is exact in any
-- JSON client (JavaScript numbers included), and far below bigint's 2^63, so no arithmetic on
-- an account can overflow. Only a grant raises balance + reserved: a reserve or a refund moves
-- credits between the two and a capture lowers it, so settling a job is never refused by it.
-- A grant past it fails on this constraint and writes nothing; the ledger maps it to 422
-- balance_limit_exceeded. Written as a subtraction so the check itself cannot overflow.

DO $$
DECLARE
    v_over bigint;
BEGIN
    SELECT count(*) INTO v_over FROM credit_accounts
    WHERE balance > 1000000000000000 - reserved;
    IF v_over > 0 THEN
        RAISE EXCEPTION '% credit account(s) hold more than 10^15 credits (balance + reserved); '
            'lower them before upgrading', v_over;
    END IF;
END
$$;

ALTER TABLE credit_accounts ADD CONSTRAINT credit_accounts_balance_limit
    CHECK (balance <= 1000000000000000 - reserved);
