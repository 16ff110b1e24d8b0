using PruneKernel.Tests.Models;
using PruneKernel.Vision;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Issue 16, files: only regular files are read (no devices, FIFOs or /proc entries), reads are bounded, and each
/// refusal is the reader's typed error.
/// </summary>
public sealed class HostileFileTests : IDisposable
{
    // Generous: the point is to tell a bounded refusal from an endless block, on a busy 2-core CI machine.
    private static readonly TimeSpan Quick = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("pk-files-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ImageFromDevZeroIsRefusedNotRead()
    {
        // Was: OutOfMemory after 4 GB.
        var e = ThrowsWithin<ImageDecodeException>(Quick, () => ImageDecoder.Load("/dev/zero"));
        Assert.Contains("/dev/zero", e.Message, StringComparison.Ordinal);
        Assert.Contains("character device", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ImageFromAFifoIsRefusedWithoutBlocking()
    {
        var fifo = Path.Combine(_dir, "pipe.png");
        MakeFifo(fifo);
        var e = ThrowsWithin<ImageDecodeException>(Quick, () => ImageDecoder.Load(fifo));
        Assert.Contains("FIFO", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ImageFromProcIsRefused()
    {
        var e = ThrowsWithin<ImageDecodeException>(Quick, () => ImageDecoder.Load("/proc/self/environ"));
        Assert.Contains("pseudo file system", e.Message, StringComparison.Ordinal);
        var link = Path.Combine(_dir, "innocent.png");
        File.CreateSymbolicLink(link, "/proc/self/environ");
        Assert.Throws<ImageDecodeException>(() => ImageDecoder.Load(link));
    }

    [Fact]
    public void ImageFileOverTheByteLimitIsRefusedBeforeReading()
    {
        var path = Path.Combine(_dir, "big.png");
        File.WriteAllBytes(path, new byte[5_000]);
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Load(path, ImageLimits.Default with { MaxBytes = 4_000 }));
        Assert.Contains("4000-byte", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DirectoryAsImageIsRefused() =>
        Assert.Contains("directory", Assert.Throws<ImageDecodeException>(() => ImageDecoder.Load(_dir)).Message, StringComparison.Ordinal);

    [Theory]
    [InlineData("config.json", typeof(ModelConfigException))]
    [InlineData("preprocessor_config.json", typeof(ModelConfigException))]
    [InlineData("generation_config.json", typeof(ModelConfigException))]
    [InlineData("tokenizer.model", typeof(TokenizerException))]
    [InlineData("tokenizer.json", typeof(TokenizerException))]
    [InlineData("tokenizer_config.json", typeof(TokenizerException))]
    [InlineData("chat_template.jinja", typeof(TokenizerException))]
    [InlineData("model.safetensors", typeof(CheckpointFormatException))]
    public void ModelFilesLinkedToDevZeroAreATypedError(string file, Type expected)
    {
        // Was: OutOfMemory after 4 GB for config and tokenizer files linked to /dev/zero.
        using var folder = new TempModelFolder("llava-tiny-f32");
        File.Delete(folder.File(file));
        File.CreateSymbolicLink(folder.File(file), "/dev/zero");
        var e = Within(Quick, () => Record.Exception(() => Lvlm.Load(folder.Path).Dispose()));
        Assert.IsType(expected, e);
        Assert.Contains(file, e!.Message, StringComparison.Ordinal);
        Assert.Contains("character device", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("config.json", typeof(ModelConfigException))]
    [InlineData("tokenizer_config.json", typeof(TokenizerException))]
    [InlineData("model.safetensors", typeof(CheckpointFormatException))]
    public void ModelFilesThatAreFifosAreRefusedWithoutBlocking(string file, Type expected)
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        File.Delete(folder.File(file));
        MakeFifo(folder.File(file));
        var e = Within(Quick, () => Record.Exception(() => Lvlm.Load(folder.Path).Dispose()));
        Assert.IsType(expected, e);
        Assert.Contains("FIFO", e!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OversizedConfigIsRefusedBeforeParsing()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        using (var stream = File.Create(folder.File("config.json")))
        {
            stream.Write("{"u8);
            var spaces = new byte[17 * 1024 * 1024];
            Array.Fill(spaces, (byte)' ');
            stream.Write(spaces);
            stream.Write("}"u8);
        }

        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("byte limit", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DuplicateKeysInConfigAreATypedError()
    {
        // System.Text.Json would otherwise throw an untyped ArgumentException when the object is first read.
        using var folder = new TempModelFolder("llava-tiny-f32");
        File.WriteAllText(folder.File("config.json"), "{\"model_type\": \"llava\", \"model_type\": \"llava\"}");
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("model_type", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ReadsHonourCancellation()
    {
        var path = Path.Combine(_dir, "data.bin");
        File.WriteAllBytes(path, new byte[3 << 20]);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        Assert.Throws<OperationCanceledException>(() => Runtime.BoundedFile.ReadAllBytes(path, long.MaxValue, cancelled.Token));
        Assert.Equal(3 << 20, Runtime.BoundedFile.ReadAllBytes(path, long.MaxValue).Length);
    }
}
