using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Vision;
using SkiaSharp;

namespace PruneKernel.Tests.ChatClient;

/// <summary>
/// A chat resends its image every turn: the client keeps recently decoded images by content and the model remembers the
/// preprocessing of decoded images — but never of an image a caller built from an array it can still change.
/// </summary>
public sealed class RecentImageTests
{
    private static byte[] Png(SKColor colour)
    {
        using var bitmap = new SKBitmap(24, 24);
        bitmap.Erase(colour);
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    [Fact]
    public async Task TheSameBytesDecodeOnceAndTheRecentSetStaysBounded()
    {
        var loader = new ImageContentLoader(new LvlmChatClientOptions(), null);
        var ct = TestContext.Current.CancellationToken;
        var red = Png(SKColors.Red);
        var first = await loader.LoadAsync(new DataContent(red, "image/png"), ct);
        Assert.Same(first, await loader.LoadAsync(new DataContent(red.ToArray(), "image/png"), ct));
        Assert.NotSame(first, await loader.LoadAsync(new DataContent(Png(SKColors.Blue), "image/png"), ct));

        for (var i = 0; i < 10; i++)
        {
            _ = await loader.LoadAsync(new DataContent(Png(new SKColor((byte)i, 1, 2)), "image/png"), ct);
        }

        var again = await loader.LoadAsync(new DataContent(red, "image/png"), ct);
        Assert.NotSame(first, again); // evicted after ten others: decoded anew
        Assert.Equal(first.Rgb.ToArray(), again.Rgb.ToArray());
    }

    [Fact]
    public void ADecodedImageIsPreprocessedOnceButACallersOwnArrayIsReadEveryTime()
    {
        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
        var decoded = ImageDecoder.Load(Fixtures.Path("images", "img00.png"));
        var a = model.CreateRawPrompt("USER: <image>\nWhat is it? ASSISTANT:", [decoded]);
        var b = model.CreateRawPrompt("USER: <image>\nAnd now? ASSISTANT:", [decoded]);
        Assert.NotSame(a.Images[0].Data, b.Images[0].Data); // each prompt owns its copy of the remembered values
        Assert.Equal(a.Images[0].Data, b.Images[0].Data);
        Array.Fill(a.Images[0].Data, 7f);
        Assert.Equal(b.Images[0].Data, model.CreateRawPrompt("USER: <image>\nOnce more? ASSISTANT:", [decoded]).Images[0].Data);

        var rgb = decoded.Rgb.ToArray();
        var own = new RgbImage(decoded.Width, decoded.Height, rgb);
        var before = model.CreateRawPrompt("USER: <image>\nWhat is it? ASSISTANT:", [own]).Images[0].Data.ToArray();
        Array.Fill(rgb, (byte)255); // the caller changes its own buffer between requests
        var after = model.CreateRawPrompt("USER: <image>\nWhat is it? ASSISTANT:", [own]).Images[0].Data;
        Assert.NotEqual(before, after);
        Assert.Equal(b.Images[0].Data, before);
    }
}
