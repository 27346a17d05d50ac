-- The lookahead k chosen over time, per run and policy: the mean over rows of k at each step index
-- of a row (step 1 = the row's first verification). rows = rows still generating at that step, so
-- late steps rest on fewer rows. mean_drafted <= mean_k (a draft can stop early); mean_accepted too.
SELECT s.run_id, g.lookahead_policy, s.step,
       count(*)                     AS rows,
       round(avg(s.k), 3)           AS mean_k,
       round(avg(s.drafted), 3)     AS mean_drafted,
       round(avg(s.accepted), 3)    AS mean_accepted
FROM steps s JOIN generations g USING (run_id, shard, row_id)
GROUP BY s.run_id, g.lookahead_policy, s.step
ORDER BY s.run_id, g.lookahead_policy, s.step;
