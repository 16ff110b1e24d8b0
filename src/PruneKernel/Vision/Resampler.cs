namespace PruneKernel.Vision;

/// <summary>
/// Separable antialiased resampling of 8-bit RGB with Pillow's arithmetic: filter support widened by the downscale
/// factor, coefficients normalised and rounded to 22-bit fixed point, a horizontal pass then a vertical pass, each
/// rounded and clamped to 8 bits. torchvision's uint8 antialiased resize (used by transformers 5) follows the same scheme.
/// </summary>
internal static class Resampler
{
    private const int PrecisionBits = 32 - 8 - 2;

    public static byte[] Resize(byte[] rgb, int width, int height, int newWidth, int newHeight, int resample)
    {
        Func<double, double> filter = resample == 2 ? Bilinear : Bicubic;
        var support = resample == 2 ? 1.0 : 2.0;
        var pixels = rgb;
        if (newWidth != width)
        {
            pixels = Pass(pixels, width, height, newWidth, horizontal: true, filter, support);
        }

        if (newHeight != height)
        {
            pixels = Pass(pixels, newWidth, height, newHeight, horizontal: false, filter, support);
        }

        return pixels;
    }

    private static double Bicubic(double x)
    {
        const double a = -0.5;
        x = Math.Abs(x);
        return x < 1 ? ((((a + 2) * x) - (a + 3)) * x * x) + 1
            : x < 2 ? ((((x - 5) * x) + 8) * x - 4) * a
            : 0;
    }

    private static double Bilinear(double x)
    {
        x = Math.Abs(x);
        return x < 1 ? 1 - x : 0;
    }

    /// <summary>Resamples along one axis; the other axis is unchanged.</summary>
    private static byte[] Pass(byte[] src, int width, int height, int outSize, bool horizontal, Func<double, double> filter, double support)
    {
        var inSize = horizontal ? width : height;
        var (bounds, weights, taps) = Coefficients(inSize, outSize, filter, support);
        var outWidth = horizontal ? outSize : width;
        var outHeight = horizontal ? height : outSize;
        var dst = new byte[outWidth * outHeight * 3];
        var half = 1 << (PrecisionBits - 1);
        for (var y = 0; y < outHeight; y++)
        {
            for (var x = 0; x < outWidth; x++)
            {
                var o = horizontal ? x : y;
                var (start, count) = bounds[o];
                for (var c = 0; c < 3; c++)
                {
                    long sum = half;
                    for (var k = 0; k < count; k++)
                    {
                        var sourceIndex = horizontal ? ((y * width) + start + k) * 3 : (((start + k) * width) + x) * 3;
                        sum += src[sourceIndex + c] * (long)weights[(o * taps) + k];
                    }

                    dst[(((y * outWidth) + x) * 3) + c] = (byte)Math.Clamp(sum >> PrecisionBits, 0, 255);
                }
            }
        }

        return dst;
    }

    private static ((int Start, int Count)[] Bounds, int[] Weights, int Taps) Coefficients(int inSize, int outSize, Func<double, double> filter, double support)
    {
        var scale = (double)inSize / outSize;
        var filterScale = Math.Max(scale, 1.0);
        var reach = support * filterScale;
        var taps = (int)Math.Ceiling(reach) * 2 + 1;
        var bounds = new (int, int)[outSize];
        var weights = new int[outSize * taps];
        var k = new double[taps];
        for (var o = 0; o < outSize; o++)
        {
            var center = (o + 0.5) * scale;
            var min = Math.Max((int)(center - reach + 0.5), 0);
            var count = Math.Min((int)(center + reach + 0.5), inSize) - min;
            var total = 0.0;
            for (var i = 0; i < count; i++)
            {
                k[i] = filter((i + min - center + 0.5) / filterScale);
                total += k[i];
            }

            for (var i = 0; i < count; i++)
            {
                var w = total != 0 ? k[i] / total : 0;
                // Round half away from zero, as Pillow's normalize_coeffs_8bpc does.
                weights[(o * taps) + i] = (int)(w < 0 ? -0.5 + (w * (1 << PrecisionBits)) : 0.5 + (w * (1 << PrecisionBits)));
            }

            bounds[o] = (min, count);
        }

        return (bounds, weights, taps);
    }
}
