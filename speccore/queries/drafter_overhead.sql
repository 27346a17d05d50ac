-- Drafter overhead share per run: draft time / total device time, summed over batches (view
-- `batches`: a batch's longest row carries its whole draft and verify time). verify_share is the
-- target's share (prefill included); other_share is the rest (sampling, detokenising, bookkeeping).
SELECT run_id,
       round(sum(draft_s), 3)                                        AS draft_s,
       round(sum(verify_s), 3)                                       AS verify_s,
       round(sum(wall_s), 3)                                         AS wall_s,
       round(sum(draft_s) / nullif(sum(wall_s), 0), 4)               AS draft_share,
       round(sum(verify_s) / nullif(sum(wall_s), 0), 4)              AS verify_share,
       round(1 - sum(draft_s + verify_s) / nullif(sum(wall_s), 0), 4) AS other_share
FROM batches
GROUP BY run_id
ORDER BY run_id;
