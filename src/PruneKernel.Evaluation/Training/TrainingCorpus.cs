using PruneKernel.Evaluation.Datasets;
using PruneKernel.Models.Llava;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Evaluation.Training;

/// <summary>
/// One training sequence: the prompt exactly as <see cref="Lvlm.CreatePrompt(IReadOnlyList{PromptMessage}, IReadOnlyList{RgbImage}, bool)"/>
/// builds it from <see cref="BenchmarkPrompt.Messages"/> (image placeholder expanded), then the answer tokens and EOS.
/// Tokens from <see cref="TargetStart"/> on are predicted (loss); <see cref="ExtraTargets"/> are earlier spans
/// [start, end) that are also predicted (assistant context turns, when enabled).
/// </summary>
internal sealed record TrainingExample(string Id, int[] InputIds, int TargetStart, int ImageIndex, IReadOnlyList<(int Start, int End)> ExtraTargets)
{
    /// <summary>Number of predicted tokens.</summary>
    public int TargetCount => InputIds.Length - TargetStart + ExtraTargets.Sum(s => s.End - s.Start);
}

/// <summary>Tokenised rows plus their preprocessed images, each distinct image file stored once.</summary>
internal sealed class TrainingCorpus : IDisposable
{
    private TrainingCorpus(IReadOnlyList<TrainingExample> examples, IReadOnlyList<BenchmarkItem> items, Tensor pixels)
    {
        Examples = examples;
        Items = items;
        Pixels = pixels;
    }

    /// <summary>The sequences, in file order.</summary>
    public IReadOnlyList<TrainingExample> Examples { get; }

    /// <summary>The rows the sequences came from, same order.</summary>
    public IReadOnlyList<BenchmarkItem> Items { get; }

    /// <summary>Preprocessed images [distinct images, C, H, W] (float32) on the training device.</summary>
    public Tensor Pixels { get; }

    /// <summary>Tokenises and preprocesses every row of <paramref name="jsonlPath"/> (images resolved against it).</summary>
    /// <exception cref="PruneKernelException">A row does not fit the model's positions or its answer does not tokenise after the prompt.</exception>
    public static TrainingCorpus Load(string jsonlPath, LlamaTextTokenizer tokenizer, IChatTemplate template, ClipImageProcessor processor,
        LlavaConfig config, bool trainContextTurns, Device device, CancellationToken cancellationToken = default)
    {
        var items = BenchmarkJsonl.Read(jsonlPath, cancellationToken);
        var imagePaths = items.Select(i => BenchmarkJsonl.ResolveImagePath(jsonlPath, i)).Distinct(StringComparer.Ordinal).ToList();
        var imageIndex = imagePaths.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i, StringComparer.Ordinal);
        var pixels = new PixelValues[imagePaths.Count];
        var parallel = new ParallelOptions { CancellationToken = cancellationToken };
        var examples = new TrainingExample[items.Count];
        try
        {
            Parallel.For(0, imagePaths.Count, parallel, i => pixels[i] = processor.Preprocess(ImageDecoder.Load(imagePaths[i])));
            // The tokenizer's lookup tables are only read while encoding, so rows tokenise in parallel.
            Parallel.For(0, items.Count, parallel, i =>
                examples[i] = Tokenise(items[i], i + 1, jsonlPath, tokenizer, template, config, trainContextTurns,
                    imageIndex[BenchmarkJsonl.ResolveImagePath(jsonlPath, items[i])], pixels[0]));
        }
        catch (AggregateException e) when (e.InnerExceptions.OfType<PruneKernelException>().Any())
        {
            // One typed error, the same every run, rather than the parallel loop's aggregate.
            throw e.InnerExceptions.OfType<PruneKernelException>().OrderBy(x => x.Message, StringComparer.Ordinal).First();
        }

        // Copied to the device in chunks: thousands of 224-pixel images would not fit one managed array.
        var first = pixels[0];
        var tensor = torch.empty([pixels.Length, first.Channels, first.Height, first.Width], dtype: ScalarType.Float32, device: device).DetachFromDisposeScope();
        using (var noGrad = torch.no_grad())
        {
            foreach (var chunk in Enumerable.Range(0, pixels.Length).Chunk(256))
            {
                using var scope = NewDisposeScope();
                var data = chunk.SelectMany(i => pixels[i].Data).ToArray();
                tensor.narrow(0, chunk[0], chunk.Length).copy_(torch.tensor(data, [chunk.Length, first.Channels, first.Height, first.Width]));
            }
        }

        return new TrainingCorpus(examples, items, tensor);
    }

    private static TrainingExample Tokenise(BenchmarkItem item, int line, string path, LlamaTextTokenizer tokenizer, IChatTemplate template,
        LlavaConfig config, bool trainContextTurns, int imageIndex, PixelValues shape)
    {
        var messages = BenchmarkPrompt.Messages(item);
        var prompt = template.Render(messages, addGenerationPrompt: true);
        var promptIds = tokenizer.Encode(prompt, addSpecialTokens: true);
        // The answer as the model would generate it after "ASSISTANT:": encoding prompt + " " + answer keeps the prompt's
        // ids as a prefix (the space starts a new piece), and what follows is the reply's tokens.
        var fullIds = tokenizer.Encode(prompt + " " + item.Answer.Trim(), addSpecialTokens: true);
        if (fullIds.Count <= promptIds.Count || !fullIds.Take(promptIds.Count).SequenceEqual(promptIds))
        {
            throw new PruneKernelException($"{path}:{line}: field 'answer' ('{item.Answer}') does not tokenise as a continuation of the prompt.");
        }

        var extra = new List<(int Start, int End)>();
        if (trainContextTurns)
        {
            // Assistant context turns: the ids of each turn's reply text, found by rendering the conversation up to and
            // including the turn (their prefixes agree with the whole prompt's ids for the same reason as the answer).
            for (var k = 0; k < messages.Count; k++)
            {
                if (messages[k].Role != PromptRole.Assistant)
                {
                    continue;
                }

                var header = tokenizer.Encode(template.Render([.. messages.Take(k)], addGenerationPrompt: true), true).Count;
                var through = tokenizer.Encode(template.Render([.. messages.Take(k + 1)], addGenerationPrompt: false), true).Count;
                if (through > header)
                {
                    extra.Add((header, through));
                }
            }
        }

        var imageTokens = config.ImageTokensFor(shape.Height, shape.Width);
        var ids = new List<int>(fullIds.Count + imageTokens + 1);
        var shift = 0;
        var expandedExtra = new List<(int Start, int End)>();
        var placeholders = 0;
        for (var i = 0; i < fullIds.Count; i++)
        {
            if (fullIds[i] == config.ImageTokenId)
            {
                placeholders++;
                ids.AddRange(Enumerable.Repeat(config.ImageTokenId, imageTokens));
                shift += imageTokens - 1;
                continue;
            }

            ids.Add(fullIds[i]);
        }

        if (placeholders != 1)
        {
            throw new PruneKernelException($"{path}:{line}: the prompt has {placeholders} image placeholders; a benchmark row needs exactly one (check 'context' for '<image>').");
        }

        // The placeholder is in the first user turn, before every assistant turn and the answer.
        foreach (var (start, end) in extra)
        {
            expandedExtra.Add((start + shift, end + shift));
        }

        ids.Add(tokenizer.EosTokenId);
        if (ids.Count > config.Text.MaxPositionEmbeddings)
        {
            throw new PruneKernelException($"{path}:{line}: {ids.Count} tokens exceed the model's {config.Text.MaxPositionEmbeddings} positions.");
        }

        return new TrainingExample(item.Id, [.. ids], promptIds.Count + shift, imageIndex, expandedExtra);
    }

    /// <summary>Releases the image tensor.</summary>
    public void Dispose() => Pixels.Dispose();
}
