-- One run at a glance, per configuration: rows, errors, output tokens, tokens/s and acceptance.
-- tok_per_s charges each batch its longest row (rows of a batch run together).
-- Parameter: $run_id
WITH batches AS (
    SELECT shard, batch, max(wall_s) AS wall_s FROM generations
    WHERE run_id = $run_id AND status = 'ok' GROUP BY shard, batch
)
SELECT
    target, drafter, algorithm, lookahead_policy, device,
    count(*)                                                 AS rows,
    count(*) FILTER (WHERE status = 'error')                 AS errors,
    coalesce(sum(n_output_tokens), 0)                        AS output_tokens,
    round(sum(n_output_tokens) / nullif((SELECT sum(wall_s) FROM batches), 0), 3) AS tok_per_s,
    round(1 + sum(accepted) / nullif(sum(steps), 0), 3)      AS mean_acceptance_length,
    round(sum(accepted) / nullif(sum(drafted), 0), 3)        AS acceptance_rate
FROM generations
WHERE run_id = $run_id
GROUP BY ALL
ORDER BY ALL;
