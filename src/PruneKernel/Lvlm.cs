using System.Diagnostics;
using PruneKernel.Checkpoints;
using PruneKernel.Generation;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using PruneKernel.Runtime;
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
/// processor and network together. Generation is serialized per instance; dispose to free the weights.
/// </summary>
public sealed class Lvlm : IDisposable
{
    private readonly LlavaForConditionalGeneration _model;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private bool _disposed;

    private Lvlm(string folder, LlavaConfig config, LlavaForConditionalGeneration model, LlamaTextTokenizer tokenizer,
        IChatTemplate template, ClipImageProcessor imageProcessor, GenerationDefaults defaults)
    {
        ModelFolder = folder;
        Config = config;
        _model = model;
        Tokenizer = tokenizer;
        ChatTemplate = template;
        ImageProcessor = imageProcessor;
        GenerationDefaults = defaults;
        _anyRes = config.ImageGridPinpoints is { } pinpoints ? new AnyResImageProcessor(imageProcessor, pinpoints) : null;
    }

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

    /// <summary>Loads config, weights (memory-mapped safetensors, one or many shards), tokenizer and processor from a folder.</summary>
    /// <exception cref="ModelConfigException">config.json is missing, malformed or unsupported.</exception>
    /// <exception cref="CheckpointFormatException">Weights are missing, malformed or do not match the config.</exception>
    /// <exception cref="TokenizerException">Tokenizer files are missing or malformed.</exception>
    /// <exception cref="ModelAllocationException">libtorch could not allocate the weights.</exception>
    public static Lvlm Load(string modelFolder, LvlmLoadOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new LvlmLoadOptions();
        if (!Directory.Exists(modelFolder))
        {
            throw new ModelConfigException($"Model folder '{modelFolder}' does not exist.");
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

        using var weights = CheckpointWeights.Open(modelFolder);
        // Config sizes are checked against the checkpoint's headers before anything is allocated.
        var model = LlavaWeightLoader.Build(config, dtype, device, weights, modelFolder, options.CheckWeights, cancellationToken);

        model.eval();
        return new Lvlm(Path.GetFullPath(modelFolder), config, model, tokenizer, template, processor, defaults) { DynamicRate = dynamicRate };
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
        int nextImage = 0, nextVideo = 0;
        foreach (var id in ids)
        {
            if (id == Config.ImageTokenId)
            {
                var image = images[nextImage++];
                expanded.AddRange(Enumerable.Repeat(id, Config.ImageTokensFor(image.Height, image.Width)));
                pixels.Add(_anyRes?.Preprocess(image) ?? ImageProcessor.Preprocess(image));
            }
            else if (id == Config.VideoTokenId)
            {
                var frames = videos[nextVideo++];
                expanded.AddRange(Enumerable.Repeat(id, frames.Count * Config.VideoTokensPerFrame));
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
        return new LvlmPrompt(text, expanded, pixels, watch.Elapsed.TotalMilliseconds, layout);
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

    /// <summary>Generates token by token; the last update carries the <see cref="GenerationResult"/>.</summary>
    public IEnumerable<GenerationUpdate> GenerateStreaming(LvlmPrompt prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _gate.Wait(cancellationToken);
        try
        {
            foreach (var update in LlavaGenerator.Run(_model, Tokenizer, prompt, options ?? new GenerationOptions(), GenerationDefaults, ImageFeatureCache, Identity, cancellationToken))
            {
                yield return update;
            }
        }
        finally
        {
            _gate.Release();
            // A request frees hundreds of MB of activations and KV cache that glibc would otherwise keep in its arenas.
            NativeMemory.Trim();
        }
    }

    /// <summary>
    /// Runs only the prompt pass with pruning and reports what it did (no decoding). Used by calibration and analyses;
    /// <paramref name="candidateScores"/> receives each scored layer's candidate scores.
    /// </summary>
    internal PruningReport Prefill(LvlmPrompt prompt, ContextPruningOptions options, Action<int, double[]>? candidateScores = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        options.Validate(Config.Text.NumHiddenLayers);
        _gate.Wait();
        try
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var pruner = new ContextPruner(options, prompt.Layout, candidateScores);
            _ = _model.ForwardPrompt(prompt.InputIds, LlavaGenerator.EncodeImages(_model, prompt, ImageFeatureCache, Identity), null, pruner);
            return pruner.Report();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Frees the weights (and GPU memory).</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _gate.Wait();
        try
        {
            _model.Dispose();
        }
        finally
        {
            _gate.Release();
            _gate.Dispose();
        }
    }
}
