using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Tests.ChatClient;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Issue 16 through IChatClient: file URIs only from allowed folders with one refusal text, one byte limit for every
/// source, bounded decoding of many hostile images in one message.
/// </summary>
public sealed class HostileChatClientTests : IClassFixture<LvlmChatClientTests.Shared>, IDisposable
{
    private static readonly byte[] Png = File.ReadAllBytes(Fixtures.Path("images", "img03.png"));
    private readonly LvlmChatClientTests.Shared _shared;
    private readonly string _root = Directory.CreateTempSubdirectory("pk-allow-").FullName;

    public HostileChatClientTests(LvlmChatClientTests.Shared shared)
    {
        _shared = shared;
        Allowed = Directory.CreateDirectory(Path.Combine(_root, "allowed")).FullName;
        Outside = Directory.CreateDirectory(Path.Combine(_root, "outside")).FullName;
        File.WriteAllBytes(Path.Combine(Allowed, "cat.png"), Png);
        File.WriteAllBytes(Path.Combine(Outside, "secret.png"), Png);
    }

    private string Allowed { get; }

    private string Outside { get; }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private static ChatMessage[] Ask(AIContent image) => [new ChatMessage(ChatRole.User, [image, new TextContent("What is in the picture?")])];

    private static UriContent FileUri(string path) => new(new Uri(path), "image/png");

    private LvlmChatClient Client(long maxBytes = 20 * 1024 * 1024) =>
        new(_shared.Model, new LvlmChatClientOptions { AllowedImageFolders = [Allowed], MaxImageBytes = maxBytes });

    /// <summary>The refusal with the URI taken out, so messages about different paths can be compared.</summary>
    private static async Task<string> Refusal(LvlmChatClient client, string path)
    {
        var uri = new Uri(path);
        var e = await Assert.ThrowsAsync<UnsupportedContentException>(() => client.GetResponseAsync(Ask(FileUri(path)), new ChatOptions { MaxOutputTokens = 1 }))
            .WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.StartsWith(uri.ToString(), e.Message, StringComparison.Ordinal);
        return e.Message[uri.ToString().Length..];
    }

    [Fact]
    public async Task FileUrisAreRefusedByDefaultWithOneTextWhetherOrNotTheFileExists()
    {
        // Was: a remote user's message made the host open /etc/shadow and /proc/self/environ, and the errors told
        // whether a file existed and its exact size.
        using var client = new LvlmChatClient(_shared.Model);
        var fifo = Path.Combine(_root, "pipe");
        MakeFifo(fifo);
        var texts = new[]
        {
            await Refusal(client, "/etc/shadow"), await Refusal(client, "/etc/passwd"), await Refusal(client, "/proc/self/environ"),
            await Refusal(client, "/no/such/file.png"), await Refusal(client, Path.Combine(Allowed, "cat.png")), await Refusal(client, fifo),
        };
        Assert.Single(texts.Distinct());
        Assert.Contains("AllowedImageFolders", texts[0], StringComparison.Ordinal);
        Assert.Contains("none is configured", texts[0], StringComparison.Ordinal);
    }

    [Fact]
    public async Task AllowedFoldersAdmitRegularFilesUnderThemOnly()
    {
        using var client = Client();
        var ok = await client.GetResponseAsync(Ask(FileUri(Path.Combine(Allowed, "cat.png"))), new ChatOptions { MaxOutputTokens = 3 }, TestContext.Current.CancellationToken);
        var expected = await client.GetResponseAsync(Ask(new DataContent(Png, "image/png")), new ChatOptions { MaxOutputTokens = 3 }, TestContext.Current.CancellationToken);
        Assert.Equal(expected.Text, ok.Text);

        // Out by "..", by a link to a file outside, by a link to a folder outside, to a device, to a FIFO, to /proc; and missing.
        File.CreateSymbolicLink(Path.Combine(Allowed, "link.png"), Path.Combine(Outside, "secret.png"));
        Directory.CreateSymbolicLink(Path.Combine(Allowed, "door"), Outside);
        File.CreateSymbolicLink(Path.Combine(Allowed, "zero.png"), "/dev/zero");
        File.CreateSymbolicLink(Path.Combine(Allowed, "env.png"), "/proc/self/environ");
        File.CreateSymbolicLink(Path.Combine(Allowed, "dangling.png"), Path.Combine(Outside, "nothing-here.png"));
        MakeFifo(Path.Combine(Allowed, "pipe.png"));
        var texts = new[]
        {
            await Refusal(client, Allowed + "/../outside/secret.png"),
            await Refusal(client, Path.Combine(Allowed, "link.png")),
            await Refusal(client, Path.Combine(Allowed, "door", "secret.png")),
            await Refusal(client, Path.Combine(Allowed, "zero.png")),
            await Refusal(client, Path.Combine(Allowed, "env.png")),
            await Refusal(client, Path.Combine(Allowed, "pipe.png")),
            await Refusal(client, Path.Combine(Allowed, "dangling.png")),
            await Refusal(client, Path.Combine(Allowed, "missing.png")),
            await Refusal(client, Path.Combine(Outside, "secret.png")),
            await Refusal(client, "/etc/passwd"),
        };
        Assert.Single(texts.Distinct());
        Assert.Contains("not a readable regular file", texts[0], StringComparison.Ordinal);

        // A link that stays inside the folder is fine.
        File.CreateSymbolicLink(Path.Combine(Allowed, "alias.png"), Path.Combine(Allowed, "cat.png"));
        Assert.Equal(expected.Text, (await client.GetResponseAsync(Ask(FileUri(Path.Combine(Allowed, "alias.png"))), new ChatOptions { MaxOutputTokens = 3 }, TestContext.Current.CancellationToken)).Text);
    }

    [Fact]
    public async Task OneByteLimitCoversDataContentFilesAndDownloads()
    {
        // Was: a 200 MB DataContent was accepted; the 20 MB limit covered only files and downloads.
        using var client = Client(maxBytes: Png.Length - 1);
        var data = await Assert.ThrowsAsync<UnsupportedContentException>(() => client.GetResponseAsync(Ask(new DataContent(Png, "image/png"))));
        Assert.Contains($"{Png.Length - 1}-byte", data.Message, StringComparison.Ordinal);
        var file = await Assert.ThrowsAsync<UnsupportedContentException>(() => client.GetResponseAsync(Ask(FileUri(Path.Combine(Allowed, "cat.png")))));
        Assert.Contains($"{Png.Length - 1}-byte", file.Message, StringComparison.Ordinal);

        using var defaults = new LvlmChatClient(_shared.Model);
        var huge = new byte[21 * 1024 * 1024];
        Png.CopyTo(huge, 0);
        var big = await Assert.ThrowsAsync<UnsupportedContentException>(() => defaults.GetResponseAsync(Ask(new DataContent(huge, "image/png"))));
        Assert.Contains("20971520-byte", big.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TenTinyImagesClaiming12000x12000InOneMessageAreRefusedWithinBoundedMemory()
    {
        // Was: ten 149-byte images passed 12 GB.
        var bomb = WithPngSize(Png(8, 8), 12_000, 12_000);
        var contents = Enumerable.Range(0, 10).Select(i => (AIContent)new DataContent(bomb, "image/png") { Name = $"bomb{i}.png" }).Append(new TextContent("Compare them."));
        ResetPeakRss();
        var before = Rss();
        var e = await Assert.ThrowsAsync<UnsupportedContentException>(() => _shared.Client.GetResponseAsync([new ChatMessage(ChatRole.User, [.. contents])]));
        Assert.Contains("bomb0.png", e.Message, StringComparison.Ordinal);
        var peak = PeakRss() - before;
        Assert.True(peak < 512L * 1024 * 1024, $"peak RSS grew by {peak / 1024 / 1024} MB");
    }

    [Fact]
    public async Task TruncatedUploadsAreRefusedUnlessAllowed()
    {
        var cut = Png.AsSpan(0, Png.Length * 6 / 10).ToArray();
        var e = await Assert.ThrowsAsync<UnsupportedContentException>(() => _shared.Client.GetResponseAsync(Ask(new DataContent(cut, "image/png"))));
        Assert.Contains("truncated", e.Message, StringComparison.Ordinal);
        using var lenient = new LvlmChatClient(_shared.Model, new LvlmChatClientOptions { AllowTruncatedImages = true });
        Assert.NotNull(await lenient.GetResponseAsync(Ask(new DataContent(cut, "image/png")), new ChatOptions { MaxOutputTokens = 1 }, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task LargeJpegUploadsStillWork()
    {
        using var small = new LvlmChatClient(_shared.Model, new LvlmChatClientOptions { MaxImagePixels = 1_000 });
        var response = await small.GetResponseAsync(Ask(new DataContent(Jpeg(64, 48), "image/jpeg")), new ChatOptions { MaxOutputTokens = 1 }, TestContext.Current.CancellationToken);
        Assert.NotNull(response);
    }
}
