-- Cost per 1M output tokens per run: device-hours x the run's price per device-hour
-- (hardware.<kind>.price_per_hour, recorded in the run manifest) / output tokens x 1e6.
-- device-hours = sum over batches of the longest row's wall time / 3600 (view `batches`): workers
-- running in parallel each bill their own hours; model loading and idle time are not counted.
-- A run without a manifest (or a price) has no cost.
WITH per_run AS (
    SELECT run_id, sum(rows) AS rows, sum(output_tokens) AS output_tokens, sum(wall_s) AS device_s
    FROM batches GROUP BY run_id
)
SELECT p.run_id, r.device, r.price_per_hour, p.rows, p.output_tokens,
       round(p.device_s, 3)                                                   AS device_s,
       round(p.device_s / 3600 * r.price_per_hour, 6)                         AS cost_usd,
       round(1e6 * p.device_s / 3600 * r.price_per_hour / nullif(p.output_tokens, 0), 4)
                                                                              AS cost_per_1m_output_tokens
FROM per_run p LEFT JOIN runs r USING (run_id)
ORDER BY p.run_id;
