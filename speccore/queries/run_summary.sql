-- One run at a glance, per configuration: rows, errors, output tokens, tokens/s and acceptance.
-- tok_per_s charges each batch its longest row (rows of a batch run together; view `batches`).
-- mean_acceptance_length = 1 + accepted / steps; acceptance_rate = accepted / drafted.
-- Parameter: $run_id
SELECT
    target, drafter, algorithm, lookahead_policy, device,
    count(*)                                                 AS rows,
    count(*) FILTER (WHERE status = 'error')                 AS errors,
    coalesce(sum(n_output_tokens), 0)                        AS output_tokens,
    round(sum(n_output_tokens) / nullif((SELECT sum(wall_s) FROM batches WHERE run_id = $run_id), 0), 3)
                                                             AS tok_per_s,
    round(1 + sum(accepted) / nullif(sum(steps), 0), 3)      AS mean_acceptance_length,
    round(sum(accepted) / nullif(sum(drafted), 0), 3)        AS acceptance_rate
FROM generations
WHERE run_id = $run_id
GROUP BY ALL
ORDER BY ALL;
