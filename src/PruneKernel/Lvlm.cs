using System.Diagnostics;
using System.Runtime.CompilerServices;
using PruneKernel.Checkpoints;
using PruneKernel.Engine;
using PruneKernel.Generation;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using PruneKernel.Quantization;
using PruneKernel.Runtime;
using PruneKernel.Sampling;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel;

/// <summary>Where and how to load a model.</summary>
public sealed record LvlmLoadOptions
{
    /// <summary>"cpu" (default), "cuda" or "cuda:N".</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>
    /// "f32", "bf16" or "f16". Default: f32 on the CPU (CPU half-precision kernels are slow), the checkpoint's own dtype on CUDA.
    /// </summary>
    public string? DType { get; init; }

    /// <summary>Scheduling and caching of the generation engine: batch size, queue bound, prefix cache, CUDA graphs.</summary>
    public EngineOptions Engine { get; init; } = new();

    /// <summary>
    /// Quantize the decoder's linear layers while loading (tensor by tensor from the memory-mapped file, on the target
    /// device; the unquantized model is never held whole). Pre-quantized AWQ/GPTQ checkpoints load in their own format
    /// whatever this says; it then applies only to layers the checkpoint left unpacked.
    /// </summary>
    public WeightQuantization Quantization { get; init; } = WeightQuantization.None;

    /// <summary>Inputs per int4 group (default 128); must divide every decoder layer's inputs.</summary>
    public int QuantizationGroupSize { get; init; } = 128;

    /// <summary>Also quantize lm_head (off by default: it sees every logit, so its error is the most visible).</summary>
    public bool QuantizeLmHead { get; init; }

    /// <summary>
    /// Verify while loading that every floating-point weight is finite (no NaN or infinity), failing with a
    /// <see cref="CheckpointFormatException"/> that names the tensor and the element. It reads each tensor's bytes once more
    /// from the mapped file, without extra memory (docs/security.md gives the cost). Off by default; the CLI turns it on.
    /// </summary>
    public bool CheckWeights { get; init; }

    /// <summary>Aspect-ratio and intermediate-size limits of image preprocessing (the decoding limits are the decoder's).</summary>
    public ImageLimits ImageLimits { get; init; } = ImageLimits.Default;
}

/// <summary>
/// A LLaVA-family vision-language model loaded from a local Hugging Face folder: tokenizer, chat template, image
/// processor and network together. Thread-safe: concurrent requests are scheduled by one engine per instance, which
/// decodes them in batches (<see cref="EngineOptions"/>). Dispose to stop it and free the weights.
/// </summary>
public sealed class Lvlm : IDisposable
{
    private readonly LlavaForConditionalGeneration _model;
    private readonly GenerationEngine _engine;
    private volatile bool _disposed;
    private bool _ownsNetwork = true;

    private Lvlm(string folder, LlavaConfig config, LlavaForConditionalGeneration model, LlamaTextTokenizer tokenizer,
        IChatTemplate template, ClipImageProcessor imageProcessor, GenerationDefaults defaults, EngineOptions engine)
    {
        ModelFolder = folder;
        Config = config;
        _model = model;
        Tokenizer = tokenizer;
        ChatTemplate = template;
        ImageProcessor = imageProcessor;
        GenerationDefaults = defaults;
        _anyRes = config.ImageGridPinpoints is { } pinpoints ? new AnyResImageProcessor(imageProcessor, pinpoints) : null;
        _vocabulary = new Lazy<TokenVocabulary>(() => new TokenVocabulary(tokenizer, defaults.EosTokenIds), LazyThreadSafetyMode.ExecutionAndPublication);
        _engine = new GenerationEngine(model, tokenizer, defaults, engine, () => ImageFeatureCache, Identity, () => Vocabulary);
    }

    private readonly Lazy<TokenVocabulary> _vocabulary;

    // A chat resends its image every turn: the preprocessing of a decoded image (which cannot change) is kept as long as
    // the image object lives, so the client's decoded-image cache makes later turns skip both decoding and resizing.
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<RgbImage, PixelValues> _preprocessed = new();

    private readonly AnyResImageProcessor? _anyRes;

    /// <summary>The folder the model was loaded from.</summary>
    public string ModelFolder { get; }

    /// <summary>The model's configuration.</summary>
    public LlavaConfig Config { get; }

    /// <summary>The model's tokenizer.</summary>
    public LlamaTextTokenizer Tokenizer { get; }

    /// <summary>The chat template that turns messages into prompt text.</summary>
    public IChatTemplate ChatTemplate { get; }

    /// <summary>The image preprocessing of this checkpoint.</summary>
    public ClipImageProcessor ImageProcessor { get; }

    /// <summary>generation_config.json's defaults.</summary>
    public GenerationDefaults GenerationDefaults { get; }

    /// <summary>
    /// What each token contributes to the output, for output constraints (<see cref="GenerationOptions.Constraint"/>);
    /// built on first use, with generation_config.json's end-of-sequence ids.
    /// </summary>
    public TokenVocabulary Vocabulary => _vocabulary.Value;

    /// <summary>
    /// This model's own dynamic pruning rate, fitted by <c>prunekernel eval</c> to its rate sweep and kept in the model
    /// folder's <see cref="LengthDependentRate.FileName"/>; null when the folder has none. Use it as
    /// <c>new ContextPruningOptions { DynamicRate = lvlm.DynamicRate }</c> (the CLI's <c>--prune-dynamic-rate</c>).
    /// </summary>
    public LengthDependentRate? DynamicRate { get; private init; }

    /// <summary>Where encoded image features are kept between requests (none by default).</summary>
    public IImageFeatureCache? ImageFeatureCache { get; set; }

    /// <summary>Identifies these weights in cache keys: folder, dtype and device.</summary>
    public string Identity => $"{ModelFolder}|{DType}|{Device}";

    /// <summary>The device the weights live on.</summary>
    public string Device => _model.Device.ToString();

    /// <summary>The dtype the weights are held in.</summary>
    public string DType => _model.DType.ToString();

    internal LlavaForConditionalGeneration Network => _model;

    /// <summary>The engine that schedules this model's requests (queue, batch, prefix cache).</summary>
    internal GenerationEngine GenerationEngine => _engine;

    /// <summary>The engine's settings.</summary>
    public EngineOptions EngineOptions => _engine.Options;

    /// <summary>Requests waiting for admission to the batch.</summary>
    public int QueuedRequests => _engine.QueueLength;

    /// <summary>Requests in the batch (in their prompt pass or decoding).</summary>
    public int ActiveRequests => _engine.ActiveCount;

    /// <summary>How the decoder's weights are held: "none", "int4-g128", "awq 4-bit g128", ...</summary>
    public string Quantization { get; private init; } = "none";

    /// <summary>Loads config, weights (memory-mapped safetensors, one or many shards), tokenizer and processor from a folder.</summary>
    /// <exception cref="ModelConfigException">config.json is missing, malformed or unsupported.</exception>
    /// <exception cref="CheckpointFormatException">Weights are missing, malformed or do not match the config.</exception>
    /// <exception cref="TokenizerException">Tokenizer files are missing or malformed.</exception>
    /// <exception cref="ModelAllocationException">libtorch could not allocate the weights.</exception>
    public static Lvlm Load(string modelFolder, LvlmLoadOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new LvlmLoadOptions();
        options.Engine.Validate();
        if (!Directory.Exists(modelFolder))
        {
            // A relative path is resolved against the process's current folder, which is rarely what a service expects: say where.
            var resolved = Path.GetFullPath(modelFolder);
            throw new ModelConfigException(resolved == modelFolder
                ? $"Model folder '{modelFolder}' does not exist."
                : $"Model folder '{modelFolder}' does not exist (resolved against the current folder to '{resolved}').");
        }

        var config = LlavaConfig.Load(modelFolder);
        var device = TorchRuntime.ResolveDevice(options.Device);
        var dtype = options.DType is { } name ? TorchRuntime.ResolveDType(name)
            : device.type == DeviceType.CPU || config.TorchDtype is null ? ScalarType.Float32
            : TorchRuntime.ResolveDType(config.TorchDtype);
        var tokenizer = LlamaTextTokenizer.Load(modelFolder);
        var template = ChatTemplates.ForModel(modelFolder);
        var processor = new ClipImageProcessor(ImageProcessorConfig.LoadFromModelFolder(modelFolder), options.ImageLimits);
        var defaults = GenerationDefaults.Load(modelFolder, config.Text.EosTokenIds);
        var dynamicRate = LengthDependentRate.FromModelFolder(modelFolder);

        if (options.QuantizationGroupSize <= 0)
        {
            throw new PruneKernelException($"QuantizationGroupSize must be positive (got {options.QuantizationGroupSize}).");
        }

        var plan = new QuantizationPlan(options.Quantization, options.QuantizationGroupSize, options.QuantizeLmHead, config.Quantization);
        using var weights = CheckpointWeights.Open(modelFolder);
        // Config sizes are checked against the checkpoint's headers before anything is allocated.
        var model = LlavaWeightLoader.Build(config, dtype, device, weights, modelFolder, plan, options.CheckWeights, cancellationToken);

        model.eval();
        if (device.type == DeviceType.CUDA)
        {
            // The engine thread may issue its work on a stream of its own: the weights' copies must be complete first.
            torch.cuda.synchronize();
        }

        return new Lvlm(Path.GetFullPath(modelFolder), config, model, tokenizer, template, processor, defaults, options.Engine)
        {
            DynamicRate = dynamicRate,
            Quantization = plan.Describe(),
        };
    }

    /// <summary>
    /// A model over a network built in memory (benchmarks on random weights of a named shape): no checkpoint folder, the
    /// LLaVA-1.5 template, default CLIP preprocessing. With <paramref name="ownsNetwork"/> false several instances (each
    /// with its own engine) can share one network.
    /// </summary>
    internal static Lvlm FromNetwork(LlavaForConditionalGeneration network, LlamaTextTokenizer tokenizer, GenerationDefaults defaults, EngineOptions engine,
        bool ownsNetwork = true)
    {
        engine.Validate();
        return new Lvlm("(in memory)", network.Config, network, tokenizer, Llava15ChatTemplate.Instance, new ClipImageProcessor(new ImageProcessorConfig()),
            defaults, engine) { _ownsNetwork = ownsNetwork };
    }

    private PixelValues Preprocess(RgbImage image) => _anyRes?.Preprocess(image) ?? ImageProcessor.Preprocess(image);

    private static PixelValues Copy(PixelValues p) => p with { Data = (float[])p.Data.Clone(), HighRes = p.HighRes is { } h ? Copy(h) : null };

    /// <summary>
    /// A second front over this model's network with an engine of its own (other cache or batching settings), for
    /// measurements that compare engines on the same weights. The network stays owned by this instance: dispose the
    /// sibling first.
    /// </summary>
    internal Lvlm WithEngine(EngineOptions engine)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        engine.Validate();
        return new Lvlm(ModelFolder, Config, _model, Tokenizer, ChatTemplate, ImageProcessor, GenerationDefaults, engine)
        {
            _ownsNetwork = false,
            DynamicRate = DynamicRate,
            ImageFeatureCache = ImageFeatureCache,
        };
    }

    /// <summary>
    /// Renders messages through the chat template and attaches the images (one per image part, in order). Message text is
    /// tokenised as text: a literal <c>&lt;image&gt;</c> or <c>&lt;/s&gt;</c> in it stays those characters.
    /// </summary>
    public LvlmPrompt CreatePrompt(IReadOnlyList<PromptMessage> messages, IReadOnlyList<RgbImage> images, bool addGenerationPrompt = true) =>
        CreatePrompt(messages, images, [], addGenerationPrompt);

    /// <summary>
    /// Renders messages with image and video parts (LLaVA-NeXT-Video) through the chat template and attaches the images and
    /// the videos (each a sequence of frames), each list in order of appearance. Only the template's markup and the image
    /// layout produce special tokens; message text is tokenised as text.
    /// </summary>
    public LvlmPrompt CreatePrompt(IReadOnlyList<PromptMessage> messages, IReadOnlyList<RgbImage> images,
        IReadOnlyList<IReadOnlyList<RgbImage>> videos, bool addGenerationPrompt = true)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var segments = ChatTemplate.RenderSegments(messages, addGenerationPrompt);
        return CreatePrompt(string.Concat(segments.Select(s => s.Text)), Tokenizer.Encode(segments, addSpecialTokens: true), images, videos);
    }

    /// <summary>Uses <paramref name="text"/> as is; it must hold one image placeholder (<c>&lt;image&gt;</c>) per image.</summary>
    /// <exception cref="PruneKernelException">Placeholders and images do not pair up.</exception>
    public LvlmPrompt CreateRawPrompt(string text, IReadOnlyList<RgbImage> images) => CreateRawPrompt(text, images, []);

    /// <summary>
    /// Uses <paramref name="text"/> as is; it must hold one <c>&lt;image&gt;</c> per image and one <c>&lt;video&gt;</c> per
    /// video (a sequence of frames; LLaVA-NeXT-Video only).
    /// </summary>
    /// <exception cref="PruneKernelException">Placeholders and inputs do not pair up, or the model takes no video.</exception>
    public LvlmPrompt CreateRawPrompt(string text, IReadOnlyList<RgbImage> images, IReadOnlyList<IReadOnlyList<RgbImage>> videos)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(text);
        return CreatePrompt(text, Tokenizer.Encode(text, addSpecialTokens: true), images, videos);
    }

    /// <summary>Pairs placeholders with inputs, expands them and preprocesses the inputs (shared by both prompt builders).</summary>
    private LvlmPrompt CreatePrompt(string text, IReadOnlyList<int> ids, IReadOnlyList<RgbImage> images, IReadOnlyList<IReadOnlyList<RgbImage>> videos)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(videos);
        var watch = Stopwatch.StartNew();
        // Ids index the embedding matrix: a tokenizer with more tokens than the model has rows must fail here, typed.
        if (ids.FirstOrDefault(id => id < 0 || id >= Config.Text.VocabSize, -1) is var outside and >= 0)
        {
            throw new TokenizerException(
                $"{ModelFolder}: the tokenizer produced id {outside} ('{Tokenizer.IdToToken(outside)}'), outside the model's vocabulary of {Config.Text.VocabSize}.");
        }

        var placeholders = ids.Count(id => id == Config.ImageTokenId);
        if (placeholders != images.Count)
        {
            throw new PruneKernelException(
                $"The prompt has {placeholders} image placeholder(s) ({ChatTemplate.ImageToken}) but {images.Count} image(s) were given.");
        }

        var videoPlaceholders = Config.VideoTokenId is int videoId ? ids.Count(id => id == videoId) : 0;
        if (videos.Count > 0 && Config.VideoTokenId is null)
        {
            throw new PruneKernelException($"This model ({Config.ModelType}) takes no video; LLaVA-NeXT-Video does.");
        }

        if (videoPlaceholders != videos.Count || videos.Any(v => v.Count == 0))
        {
            throw new PruneKernelException(
                $"The prompt has {videoPlaceholders} video placeholder(s) ({ChatTemplates.VideoToken}) but {videos.Count} video(s) were given (each needs frames).");
        }

        // Each placeholder becomes as many tokens as its input yields (fixed per image, except for LLaVA-NeXT's grids;
        // pooled patches per frame for videos), and the inputs are kept in the order their placeholders appear.
        var expanded = new List<int>(ids.Count);
        var pixels = new List<PixelValues>();
        var spans = new List<(int Start, int Length)>();
        int nextImage = 0, nextVideo = 0;
        foreach (var id in ids)
        {
            if (id == Config.ImageTokenId)
            {
                var image = images[nextImage++];
                var count = Config.ImageTokensFor(image.Height, image.Width);
                spans.Add((expanded.Count, count));
                expanded.AddRange(Enumerable.Repeat(id, count));
                // A prompt's pixel values are public and mutable: each prompt gets its own copy of the remembered ones.
                pixels.Add(image.Unshared ? Copy(_preprocessed.GetValue(image, Preprocess)) : Preprocess(image));
            }
            else if (id == Config.VideoTokenId)
            {
                var frames = videos[nextVideo++];
                var count = frames.Count * Config.VideoTokensPerFrame;
                spans.Add((expanded.Count, count));
                expanded.AddRange(Enumerable.Repeat(id, count));
                pixels.Add(VideoPixels(frames));
            }
            else
            {
                expanded.Add(id);
            }
        }

        foreach (var p in pixels)
        {
            if (p.Height != Config.Vision.ImageSize || p.Width != Config.Vision.ImageSize)
            {
                throw new ModelConfigException(
                    $"preprocessor_config.json yields {p.Width}x{p.Height} images but the vision tower expects {Config.Vision.ImageSize}x{Config.Vision.ImageSize}.");
            }

            if (Config.HighResVision is { } high && (p.HighRes is not { } hr || hr.Height != high.ImageSize || hr.Width != high.ImageSize))
            {
                throw new ModelConfigException(
                    $"preprocessor_config.json must give {Config.ModelType} {high.ImageSize}x{high.ImageSize} high-resolution images (high_res_size).");
            }
        }

        var layout = new PromptLayout(
            expanded.Select(id => id == Config.ImageTokenId || id == Config.VideoTokenId).ToArray(),
            TailStart(expanded, ChatTemplate.GenerationPrompt) ?? expanded.Count - 1,
            TailStart(expanded, ChatTemplate.UserTurnMarker));
        return new LvlmPrompt(text, expanded, pixels, watch.Elapsed.TotalMilliseconds, layout, spans);
    }

    /// <summary>A video's frames through the CLIP steps, one tile per frame.</summary>
    private PixelValues VideoPixels(IReadOnlyList<RgbImage> frames)
    {
        var each = frames.Select(ImageProcessor.Preprocess).ToArray();
        return new PixelValues(each.SelectMany(p => p.Data).ToArray(), 3, each[0].Height, each[0].Width) { Tiles = each.Length, IsVideo = true };
    }

    /// <summary>
    /// Start of the shortest suffix of <paramref name="ids"/> whose text contains <paramref name="marker"/> (searched
    /// within the last 512 tokens), or null. Token text, not token ids, so any tokenisation of the marker is found.
    /// </summary>
    private int? TailStart(List<int> ids, string marker)
    {
        for (var k = 1; k <= Math.Min(ids.Count, 512); k++)
        {
            if (Tokenizer.Decode(ids.Skip(ids.Count - k), skipSpecialTokens: false).Contains(marker, StringComparison.Ordinal))
            {
                return ids.Count - k;
            }
        }

        return null;
    }

    /// <summary>Generates a completion for the prompt.</summary>
    /// <exception cref="ContextLengthExceededException">Prompt plus budget exceed the context.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; generation stops between tokens.</exception>
    public GenerationResult Generate(LvlmPrompt prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        GenerationResult? result = null;
        foreach (var update in GenerateStreaming(prompt, options, cancellationToken))
        {
            result = update.Result ?? result;
        }

        return result!;
    }

    /// <summary>Generates a completion without blocking a thread while the request waits or runs.</summary>
    public async Task<GenerationResult> GenerateAsync(LvlmPrompt prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        GenerationResult? result = null;
        await foreach (var update in GenerateStreamingAsync(prompt, options, cancellationToken).ConfigureAwait(false))
        {
            result = update.Result ?? result;
        }

        return result!;
    }

    /// <summary>
    /// Generates token by token; the last update carries the <see cref="GenerationResult"/>. Disposing the enumerator
    /// early (breaking out of the loop) cancels the request at its next step.
    /// </summary>
    public IEnumerable<GenerationUpdate> GenerateStreaming(LvlmPrompt prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var sequence = _engine.Submit(prompt, options ?? new GenerationOptions(), options?.ConversationId, cancellationToken);
        try
        {
            var reader = sequence.Updates;
            while (true)
            {
                // Tokens the engine produced ahead of the reader are not handed out once the caller has cancelled.
                cancellationToken.ThrowIfCancellationRequested();
                if (reader.TryRead(out var update))
                {
                    yield return update;
                }
                else if (!reader.WaitToReadAsync(cancellationToken).AsTask().GetAwaiter().GetResult())
                {
                    yield break;
                }
            }
        }
        finally
        {
            sequence.Cancel();
        }
    }

    /// <summary>
    /// Generates token by token without blocking a thread; the last update carries the <see cref="GenerationResult"/>.
    /// Disposing the enumerator early cancels the request at its next step.
    /// </summary>
    public async IAsyncEnumerable<GenerationUpdate> GenerateStreamingAsync(LvlmPrompt prompt, GenerationOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var sequence = _engine.Submit(prompt, options ?? new GenerationOptions(), options?.ConversationId, cancellationToken);
        try
        {
            await foreach (var update in sequence.Updates.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                // ReadAllAsync drains buffered tokens without looking at the token: cancellation must win over them.
                cancellationToken.ThrowIfCancellationRequested();
                yield return update;
            }
        }
        finally
        {
            sequence.Cancel();
        }
    }

    /// <summary>
    /// Runs only the prompt pass with pruning and reports what it did (no decoding). Used by calibration and analyses;
    /// <paramref name="candidateScores"/> receives each scored layer's candidate scores.
    /// </summary>
    internal PruningReport Prefill(LvlmPrompt prompt, ContextPruningOptions options, Action<int, double[]>? candidateScores = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        options = options.FitTo(Config.Text.NumHiddenLayers);
        options.Validate(Config.Text.NumHiddenLayers);
        return _engine.RunExclusive(() =>
        {
            using var scope = torch.NewDisposeScope();
            var pruner = new ContextPruner(options, prompt.Layout, candidateScores);
            _ = _model.ForwardPrompt(prompt.InputIds, Engine.Prefill.EncodeImages(_model, prompt, ImageFeatureCache, Identity), null, pruner);
            return pruner.Report();
        });
    }

    /// <summary>
    /// Stops the engine (waiting and running requests end with <see cref="ObjectDisposedException"/> at their next step)
    /// and frees the weights (and GPU memory).
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _engine.Dispose();
        if (_ownsNetwork)
        {
            _model.Dispose();
        }
    }
}
