namespace PruneKernel.Extensions.AI;

/// <summary>Settings of <see cref="LvlmChatClient"/> and of its DI registration (bindable from configuration).</summary>
public sealed class LvlmChatClientOptions
{
    /// <summary>Model folder (Hugging Face format). Required when the client is created through DI.</summary>
    public string? ModelPath { get; set; }

    /// <summary>"cpu", "cuda" or "cuda:N".</summary>
    public string Device { get; set; } = "cpu";

    /// <summary>"f32", "bf16" or "f16"; null picks the runtime's default for the device.</summary>
    public string? DType { get; set; }

    /// <summary>Quantize the decoder's linear layers on load: None (default), Int8 or Int4 (binds from "int4" etc.).</summary>
    public WeightQuantization Quantization { get; set; } = WeightQuantization.None;

    /// <summary>Inputs per int4 group.</summary>
    public int QuantizationGroupSize { get; set; } = 128;

    /// <summary>Also quantize lm_head.</summary>
    public bool QuantizeLmHead { get; set; }

    /// <summary>Verify while loading that every weight is finite (<see cref="LvlmLoadOptions.CheckWeights"/>; about 12 % more load time).</summary>
    public bool CheckWeights { get; set; }

    /// <summary>Model id reported in responses; default: the folder name.</summary>
    public string? ModelId { get; set; }

    /// <summary>Output budget when a request sets none.</summary>
    public int DefaultMaxOutputTokens { get; set; } = 256;

    /// <summary>Fetch http(s) image URIs (off by default: a request could otherwise make the host download anything).</summary>
    public bool AllowRemoteImages { get; set; }

    /// <summary>Largest encoded image accepted from any source (DataContent, file, download), in bytes.</summary>
    public long MaxImageBytes { get; set; } = 20 * 1024 * 1024;

    /// <summary>
    /// Most pixels a decoded image may have (default 4096 x 4096, as <see cref="Vision.ImageLimits.MaxPixels"/>); larger JPEG,
    /// WebP and GIF images are decoded at reduced size, larger PNG and BMP images are refused.
    /// </summary>
    public long MaxImagePixels { get; set; } = Vision.ImageLimits.Default.MaxPixels;

    /// <summary>Accept truncated or corrupt PNG/JPEG data, decoding what is there (off: such images are refused).</summary>
    public bool AllowTruncatedImages { get; set; }

    /// <summary>
    /// Folders from which <c>file://</c> image URIs may be read (default: none, so every file URI is refused: a request
    /// comes from whoever can reach the client, and would otherwise make the host open any path it names). A file is read
    /// only if it is a regular file whose real path (symbolic links and <c>..</c> resolved) lies under one of them; every
    /// refusal reads the same, whether or not the file exists.
    /// </summary>
    public IList<string> AllowedImageFolders { get; set; } = [];

    /// <summary>Time limit of one remote image download.</summary>
    public TimeSpan RemoteImageTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Bytes of encoded image features kept between requests (0 disables the cache).</summary>
    public long ImageCacheBytes { get; set; } = 256L * 1024 * 1024;

    /// <summary>
    /// Bytes of cached keys and values (the model's own attention cache of earlier requests) reused when a request resends
    /// a history that starts the same way; 0 turns it off. Null: 512 MiB on the CPU, 2 GiB on CUDA
    /// (<see cref="EngineOptions.PrefixCacheBytes"/>).
    /// </summary>
    public long? PrefixCacheBytes { get; set; }

    /// <summary>What pruned requests reuse from the prefix cache (<see cref="EngineOptions.PrunedPrefixReuse"/>).</summary>
    public PrunedPrefixReuse PrunedPrefixReuse { get; set; } = PrunedPrefixReuse.Exact;

    /// <summary>Most requests decoded together (<see cref="EngineOptions.MaxBatchSize"/>, default 8).</summary>
    public int MaxBatchSize { get; set; } = 8;

    /// <summary>Most requests waiting; one more fails at once with <see cref="EngineOverloadedException"/> (default 256).</summary>
    public int MaxQueuedRequests { get; set; } = 256;

    /// <summary>Most tokens (prompt plus output budget) admitted at once; 0: no limit of its own (<see cref="EngineOptions.MaxTokensInFlight"/>).</summary>
    public long MaxTokensInFlight { get; set; }

    /// <summary>Replay decoding steps from CUDA graphs where possible (default on).</summary>
    public bool CudaGraphs { get; set; } = true;

    /// <summary>The engine settings these options describe.</summary>
    public EngineOptions ToEngineOptions() => new()
    {
        PrefixCacheBytes = PrefixCacheBytes,
        PrunedPrefixReuse = PrunedPrefixReuse,
        MaxBatchSize = MaxBatchSize,
        MaxQueuedRequests = MaxQueuedRequests,
        MaxTokensInFlight = MaxTokensInFlight,
        CudaGraphs = CudaGraphs,
    };
}

/// <summary>A message part the local model cannot take (audio, unknown media types, undecodable images, ...).</summary>
public sealed class UnsupportedContentException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public UnsupportedContentException() { }

    /// <summary>Creates the exception with a message.</summary>
    public UnsupportedContentException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public UnsupportedContentException(string message, Exception innerException) : base(message, innerException) { }
}
