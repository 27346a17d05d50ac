-- Acceptance by draft position p = 1..k, per run: how often a draft reached position p and was kept.
-- A step that drafted d tokens (target tokens) and kept a counts as drafted at positions 1..d and
-- accepted at positions 1..a. acceptance_rate = accepted / drafted at p.
-- reached = steps that drafted position p and kept every token before it; alpha = accepted / reached
-- is the per-token acceptance at p (the alpha of DESIGN.md section 5, by position; NULL where no
-- draft reached p with every earlier token kept).
WITH positions AS (
    SELECT run_id, accepted, unnest(range(1, drafted + 1)) AS position
    FROM steps WHERE drafted > 0
)
SELECT run_id, position,
       count(*)                                         AS drafted,
       count(*) FILTER (WHERE position <= accepted)     AS accepted,
       count(*) FILTER (WHERE position - 1 <= accepted) AS reached,
       round(count(*) FILTER (WHERE position <= accepted) / count(*), 4) AS acceptance_rate,
       round(count(*) FILTER (WHERE position <= accepted)
             / nullif(count(*) FILTER (WHERE position - 1 <= accepted), 0), 4) AS alpha
FROM positions
GROUP BY run_id, position
ORDER BY run_id, position;
