-- Output tokens per second and rows per second, per run and device kind.
-- Rows of one batch run together, so their wall times overlap: a batch costs its longest row,
-- and a run costs the sum of its batches (view `batches`; status ok rows only).
SELECT run_id, device,
       sum(rows) AS rows,
       sum(output_tokens) AS output_tokens,
       round(sum(wall_s), 3) AS wall_s,
       round(sum(output_tokens) / nullif(sum(wall_s), 0), 3) AS tok_per_s,
       round(sum(rows) / nullif(sum(wall_s), 0), 4) AS rows_per_s
FROM batches
GROUP BY run_id, device
ORDER BY run_id, device;
