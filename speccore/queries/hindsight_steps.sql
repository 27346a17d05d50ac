-- Every logged step of every row with the target forward it shared, for the oracle analysis
-- (speccore.hindsight). Rows of a batch share each step's forward: one forward is (run, shard,
-- batch, step index, its draft_ms and verify_ms); its verify width is the longest draft in it.
-- first_in_forward marks one row per forward, so that each forward's timings count once.
WITH s AS (
    SELECT s.*, g.lookahead_policy, g.batch
    FROM steps s JOIN generations g USING (run_id, shard, row_id)
)
SELECT run_id, lookahead_policy, shard, batch, row_id, step, k, drafted, accepted, draft_ms, verify_ms, batch_size,
       max(drafted) OVER fwd AS width,
       row_number() OVER (fwd ORDER BY row_id) = 1 AS first_in_forward
FROM s
WINDOW fwd AS (PARTITION BY run_id, shard, batch, step, draft_ms, verify_ms)
ORDER BY run_id, shard, batch, step, row_id;
