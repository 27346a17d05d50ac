-- Cost per 1M output tokens of each (drafter, algorithm, lookahead_policy), per dataset, target and
-- prompt-length bucket ('all' = every length), over every run with a manifest, ranked cheapest first.
-- A row's device time is its batch's wall time (the longest row) split over the batch's rows in
-- proportion to their own wall times: a row that kept the batch busy longer pays more, and the shares
-- add up to the batch's wall time. Cost = device-hours x the run's price_per_hour.
-- Evidence: runs, rows and output tokens behind each entry, and the cheapest and dearest single run.
WITH ok AS (
    SELECT g.*, dataset_label(r.dataset) AS dataset, r.price_per_hour
    FROM generations g JOIN runs r USING (run_id)
    WHERE g.status = 'ok' AND r.price_per_hour IS NOT NULL
),
charged AS (
    SELECT ok.*,
           CASE WHEN sum(wall_s) OVER b > 0 THEN max(wall_s) OVER b * wall_s / sum(wall_s) OVER b
                ELSE max(wall_s) OVER b / count(*) OVER b END AS device_s
    FROM ok WINDOW b AS (PARTITION BY run_id, shard, batch)
),
bucketed AS (
    SELECT *, prompt_bucket(n_prompt_tokens) AS prompt_bucket, prompt_bucket_lo(n_prompt_tokens) AS bucket_lo
    FROM charged
    UNION ALL
    SELECT *, 'all' AS prompt_bucket, -1 AS bucket_lo FROM charged
),
per_run AS (
    SELECT dataset, target, prompt_bucket, bucket_lo, drafter, algorithm, lookahead_policy, run_id,
           count(*) AS rows, sum(n_output_tokens) AS output_tokens, sum(device_s) AS device_s,
           sum(device_s / 3600 * price_per_hour) AS cost_usd
    FROM bucketed
    GROUP BY ALL
),
per_config AS (
    SELECT dataset, target, prompt_bucket, bucket_lo, drafter, algorithm, lookahead_policy,
           count(*) AS runs, sum(rows) AS rows, sum(output_tokens) AS output_tokens,
           sum(device_s) AS device_s,
           1e6 * sum(cost_usd) / nullif(sum(output_tokens), 0) AS cost_per_1m,
           min(1e6 * cost_usd / nullif(output_tokens, 0)) AS min_run,
           max(1e6 * cost_usd / nullif(output_tokens, 0)) AS max_run
    FROM per_run
    GROUP BY ALL
)
SELECT dataset, target, prompt_bucket, drafter, algorithm, lookahead_policy,
       rank() OVER (PARTITION BY dataset, target, prompt_bucket ORDER BY cost_per_1m NULLS LAST) AS rank,
       round(cost_per_1m, 4) AS cost_per_1m_output_tokens,
       runs, rows, output_tokens, round(device_s, 3) AS device_s,
       round(min_run, 4) AS min_run_cost_per_1m, round(max_run, 4) AS max_run_cost_per_1m
FROM per_config
ORDER BY dataset, target, bucket_lo, rank, drafter, algorithm, lookahead_policy;
