namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>
/// Grows a context exchange by exchange until its prompt reaches a token target, then closes the gap by adding or
/// removing single sentences (short acknowledgements for the last few tokens), re-measuring the exact count each time.
/// </summary>
internal sealed class TokenLengthFitter(PromptTokenCounter counter)
{
    private const int MaxAdjustments = 40;
    private const int TurnOverhead = 8;
    private const int Attempts = 8;

    /// <summary>
    /// Fitted turns and their exact prompt token count. <paramref name="drills"/> (training only) are placed at random
    /// places among the exchanges, as many as fit in half of the group's room for context.
    /// </summary>
    public (List<ContextTurn> Turns, int Tokens) Fit(
        ContextWriter writer, DeterministicRandom rng, Func<IReadOnlyList<ContextTurn>, BenchmarkItem> makeItem, int target, string? cue,
        IReadOnlyList<Exchange>? drills = null)
    {
        var bare = counter.Count(makeItem([]));
        var tolerance = (int)Math.Floor(target * 0.02);
        if (bare > target + tolerance)
        {
            throw new DatasetOptionsException($"--groups: {target} tokens is shorter than the question alone ({bare} tokens).");
        }

        // A short group can be missed when the only exchange is long and cannot shrink; fresh, shorter exchanges then fit.
        var best = (Turns: new List<ContextTurn>(), Tokens: bare);
        for (var attempt = 0; attempt < Attempts; attempt++)
        {
            var fitted = FitOnce(writer, rng, makeItem, target, cue, bare, shortBelow: 40 * (attempt + 1), drills ?? []);
            if (Math.Abs(target - fitted.Tokens) <= tolerance)
            {
                return fitted;
            }

            best = Math.Abs(target - fitted.Tokens) < Math.Abs(target - best.Tokens) ? fitted : best;
        }

        throw new DatasetGenerationException($"could not fit a context to {target} tokens within 2 % (closest: {best.Tokens}, the question alone: {bare}); use a larger group.");
    }

    private (List<ContextTurn> Turns, int Tokens) FitOnce(
        ContextWriter writer, DeterministicRandom rng, Func<IReadOnlyList<ContextTurn>, BenchmarkItem> makeItem, int target, string? cue, int bare, int shortBelow,
        IReadOnlyList<Exchange> drills)
    {
        var exchanges = new List<Exchange>();
        int Measure() => counter.Count(makeItem(Turns(exchanges)));
        int EstimateOf(Exchange e) => TurnOverhead + counter.Estimate(e.User) + e.Assistant.Sum(s => counter.Estimate(s.Text));
        var tolerance = (int)Math.Floor(target * 0.02);
        var tokens = bare;

        var placed = new List<Exchange>();
        var drillTokens = 0;
        foreach (var drill in drills)
        {
            var cost = EstimateOf(drill);
            if (drillTokens + cost > (target - bare) / 2)
            {
                break;
            }

            placed.Add(drill);
            drillTokens += cost;
        }

        var estimate = tokens + drillTokens;
        while (estimate < target)
        {
            // Near the target a full exchange (30-150 tokens) would overshoot a short group; a short one fits.
            // Later attempts switch to short exchanges earlier.
            var exchange = target - estimate < shortBelow ? writer.ShortExchange() : writer.Next();
            exchanges.Add(exchange);
            estimate += EstimateOf(exchange);
        }

        if (cue is not null)
        {
            if (exchanges.Count == 0)
            {
                exchanges.Add(writer.ShortExchange());
            }

            var host = exchanges[rng.Next(exchanges.Count)];
            host.Assistant.Insert(rng.Next(host.Assistant.Count + 1), new Sentence(cue, false));
            host.Locked = true;
        }

        foreach (var drill in placed)
        {
            exchanges.Insert(rng.Next(exchanges.Count + 1), drill);
        }

        // Aim at a quarter of the allowed band (0.5 %), so counts centre on the group instead of its upper edge.
        var aim = Math.Max(1, tolerance / 4);
        tokens = Measure();
        for (var step = 0; step < MaxAdjustments && Math.Abs(target - tokens) > aim; step++)
        {
            var gap = target - tokens;
            if (gap > 0)
            {
                Grow(writer, exchanges, gap);
            }
            else if (!Shrink(exchanges, -gap))
            {
                break;
            }

            tokens = Measure();
        }

        return (Turns(exchanges), tokens);
    }

    private void Grow(ContextWriter writer, List<Exchange> exchanges, int gap)
    {
        var last = exchanges.LastOrDefault(e => !e.Drill);
        if (last is null || gap > 60)
        {
            exchanges.Add(writer.Next());
            return;
        }

        // The candidate whose length is closest to the gap, among a few generic sentences and every short filler.
        var candidates = new List<(string Text, int Tokens)>();
        if (gap > 8)
        {
            for (var i = 0; i < 6; i++)
            {
                var s = writer.GenericSentence();
                candidates.Add((s, counter.Estimate(s)));
            }
        }

        candidates.AddRange(writer.ShortFillers().Select(s => (s, counter.Estimate(s))));
        var best = candidates.MinBy(c => Math.Abs(c.Tokens - gap));
        last.Assistant.Add(new Sentence(best.Text, true));
    }

    private bool Shrink(List<Exchange> exchanges, int excess)
    {
        var options = new List<(int Exchange, int Sentence, int Tokens)>();
        for (var e = 0; e < exchanges.Count; e++)
        {
            var ex = exchanges[e];
            for (var s = 0; s < ex.Assistant.Count; s++)
            {
                if (ex.Assistant[s].Removable && ex.Assistant.Count > 1)
                {
                    options.Add((e, s, counter.Estimate(ex.Assistant[s].Text)));
                }
            }

            if (!ex.Locked)
            {
                options.Add((e, -1, TurnOverhead + counter.Estimate(ex.User) + ex.Assistant.Sum(x => counter.Estimate(x.Text))));
            }
        }

        if (options.Count == 0)
        {
            return false;
        }

        // Prefer removals that do not overshoot by more than they fix.
        var best = options.MinBy(o => Math.Abs(o.Tokens - excess) + (o.Tokens > 2 * excess ? 1000 : 0));
        if (best.Sentence < 0)
        {
            exchanges.RemoveAt(best.Exchange);
        }
        else
        {
            exchanges[best.Exchange].Assistant.RemoveAt(best.Sentence);
        }

        return true;
    }

    private static List<ContextTurn> Turns(List<Exchange> exchanges)
    {
        var turns = new List<ContextTurn>(exchanges.Count * 2);
        foreach (var e in exchanges)
        {
            turns.Add(new ContextTurn("user", e.User));
            turns.Add(new ContextTurn("assistant", e.AssistantText));
        }

        return turns;
    }
}
