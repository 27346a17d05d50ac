-- Output tokens per second and rows per second, per run and device kind.
-- Rows of one batch run together, so their wall times overlap: a batch costs its longest row,
-- and a run costs the sum of its batches.
WITH batches AS (
    SELECT run_id, shard, batch, any_value(device) AS device, max(wall_s) AS wall_s,
           sum(n_output_tokens) AS tokens, count(*) AS rows
    FROM generations WHERE status = 'ok'
    GROUP BY run_id, shard, batch
)
SELECT run_id, device,
       sum(rows) AS rows,
       sum(tokens) AS output_tokens,
       round(sum(wall_s), 3) AS wall_s,
       round(sum(tokens) / nullif(sum(wall_s), 0), 3) AS tok_per_s,
       round(sum(rows) / nullif(sum(wall_s), 0), 4) AS rows_per_s
FROM batches
GROUP BY run_id, device
ORDER BY run_id;
