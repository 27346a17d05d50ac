-- Mean acceptance length and acceptance rate per run, overall (prompt_bucket 'all') and per
-- prompt-length bucket in target tokens (<128, 128-511, 512-2047, >=2048; analytics.PROMPT_BUCKETS).
-- mean_acceptance_length = 1 + accepted / steps (tokens per step); acceptance_rate = accepted / drafted.
-- Status ok rows only.
WITH ok AS (
    SELECT *, prompt_bucket(n_prompt_tokens) AS bucket, prompt_bucket_lo(n_prompt_tokens) AS bucket_lo
    FROM generations WHERE status = 'ok'
)
SELECT run_id, target, drafter, algorithm, lookahead_policy,
       CASE WHEN grouping(bucket) = 1 THEN 'all' ELSE bucket END AS prompt_bucket,
       count(*)                                            AS rows,
       sum(steps)                                          AS steps,
       sum(drafted)                                        AS drafted,
       sum(accepted)                                       AS accepted,
       round(1 + sum(accepted) / nullif(sum(steps), 0), 3) AS mean_acceptance_length,
       round(sum(accepted) / nullif(sum(drafted), 0), 3)   AS acceptance_rate
FROM ok
GROUP BY GROUPING SETS ((run_id, target, drafter, algorithm, lookahead_policy),
                        (run_id, target, drafter, algorithm, lookahead_policy, bucket, bucket_lo))
ORDER BY run_id, target, drafter, algorithm, lookahead_policy, grouping(bucket) DESC, any_value(bucket_lo);
